"""Bounds under abuse, through the running server on both backends: calls in progress per server and per account (watch streams apart), the bounded verify queue and its budget of decoded pixels, and the atomic per-account photo quota.

Uploads are held inside verification by a verifier that waits for the test to open its gate, so every
bound is reached deterministically (no sleeps, no timed assertions); after each test nothing is held.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import threading
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceharmony.clients.errors import reason_of
from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.db import models as m
from faceharmony.core.verify.base import Verdict
from faceharmony.retention.orphans import sweep_orphan_blobs
from faceharmony.server.limits import hard_limit
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import photo_pb2 as p
from tests.support import images
from tests.support.harness import start_harness, status_of
from tests.support.orders import ready_model
from tests.support.wait import wait_for

OK = (grpc.StatusCode.OK, "")
TOO_MANY = (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CONCURRENT_CALLS")
BUSY = (grpc.StatusCode.RESOURCE_EXHAUSTED, "SERVER_BUSY")
QUEUE_FULL = (grpc.StatusCode.RESOURCE_EXHAUSTED, "VERIFY_QUEUE_FULL")


class GateVerifier:
    """Accepts every photo (one face), but only once the test opens the gate; counts the uploads inside."""

    name = "gate"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.inside = 0
        self._lock = threading.Lock()

    def verify(self, image) -> Verdict:
        with self._lock:
            self.inside += 1
        self.gate.wait(60)
        with self._lock:
            self.inside -= 1
        return Verdict(faces=1, nsfw=False)


@pytest.fixture
def gated(database_url, tmp_path):
    """start(**settings) -> (harness, gate): a server whose uploads wait inside verification for gate.gate.set()."""
    started = []

    def start(**overrides):
        gate = GateVerifier()
        h = start_harness(tmp_path / "data", database_url, verifier=gate, **overrides)
        started.append((h, gate))
        return h, gate

    yield start
    for h, gate in started:
        gate.gate.set()
        h.stop()


def upload(h, user, content: bytes | None = None, **kwargs):
    return h.photos.UploadPhoto(p.UploadPhotoRequest(content=content or images.one_face()), metadata=user.md, **kwargs)


def in_background(pool, fn, *args, **kwargs):
    return pool.submit(status_of, fn, *args, **kwargs)


def held(h) -> tuple[dict, dict]:
    async def read():
        return h.api.limits.held(), h.api.verify_queue.held()

    return h.call_in_loop(read())


NOTHING_HELD = ({"server": {}, "accounts": {}}, {"waiting": 0, "running": 0, "pixels": 0})


def test_a_burst_beyond_the_per_account_bound_is_refused_while_another_account_gets_through(gated):
    h, gate = gated(max_calls_per_account=2)
    greedy, other = h.sign_up("greedy@example.com"), h.sign_up("other@example.com")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = [in_background(pool, upload, h, greedy) for _ in range(2)]
        wait_for(lambda: gate.inside == 2, 30, "two uploads inside verification")
        # the account's two slots are taken: any further call of it is refused, whatever it is
        assert status_of(upload, h, greedy) == TOO_MANY
        assert status_of(h.photos.ListPhotos, p.ListPhotosRequest(), metadata=greedy.md) == TOO_MANY
        # another account is not affected
        assert status_of(h.photos.ListPhotos, p.ListPhotosRequest(), metadata=other.md) == OK
        assert status_of(h.accounts.GetAccount, a.GetAccountRequest(), metadata=other.md) == OK
        gate.gate.set()
        assert [f.result() for f in first] == [OK, OK]
    assert status_of(h.photos.ListPhotos, p.ListPhotosRequest(), metadata=greedy.md) == OK
    assert h.db_call(m.Photo.select().count) == 2
    assert held(h) == NOTHING_HELD


def test_beyond_the_server_bound_every_call_gets_server_busy_but_health_checks_answer(gated):
    h, gate = gated(max_concurrent_calls=2)
    one, two = h.sign_up("one@example.com"), h.sign_up("two@example.com")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = [in_background(pool, upload, h, one) for _ in range(2)]
        wait_for(lambda: gate.inside == 2, 30, "two uploads inside verification")
        assert status_of(h.photos.ListPhotos, p.ListPhotosRequest(), metadata=two.md) == BUSY
        assert (
            status_of(
                h.accounts.JoinWaitlist, a.JoinWaitlistRequest(name="Bo", email="bo@example.com", is_16_or_older=True)
            )
            == BUSY
        )
        health = health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        gate.gate.set()
        assert [f.result() for f in first] == [OK, OK]
    assert status_of(h.photos.ListPhotos, p.ListPhotosRequest(), metadata=two.md) == OK
    assert held(h) == NOTHING_HELD
    assert hard_limit(h.settings) > h.settings.max_concurrent_calls + h.settings.max_concurrent_watches


def test_watch_streams_have_their_own_bound_and_leave_the_call_slots_free(gated):
    h, _ = gated(max_calls_per_account=1, max_watches_per_account=1)
    user = h.sign_up("watcher@example.com")
    model_id = ready_model(h, user)
    h.db_call(lambda: m.UserModel.update(state="training", progress=0.1).where(m.UserModel.id == model_id).execute())
    watch = lambda: h.models.WatchModel(mp.WatchModelRequest(id=model_id), metadata=user.md, timeout=30)  # noqa: E731
    stream = watch()
    assert next(stream).state == mp.MODEL_STATE_TRAINING
    # the open stream does not use the account's one call slot...
    assert status_of(h.models.GetModel, mp.GetModelRequest(id=model_id), metadata=user.md) == OK
    # ...but a second stream is beyond the watch bound
    assert status_of(lambda: next(watch())) == TOO_MANY
    stream.cancel()
    wait_for(lambda: held(h) == NOTHING_HELD, 30, "the cancelled stream's slot given back")
    again = watch()
    assert next(again).state == mp.MODEL_STATE_TRAINING
    again.cancel()


def test_a_full_verify_queue_is_refused_at_once_and_leaves_nothing(gated):
    h, gate = gated(verifier_workers=1, verify_queue_size=1)
    users = [h.sign_up(f"queue{i}@example.com") for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = in_background(pool, upload, h, users[0])
        wait_for(lambda: gate.inside == 1, 30, "one upload inside verification")
        waiting = in_background(pool, upload, h, users[1])
        wait_for(lambda: held(h)[1]["waiting"] == 1, 30, "one upload waiting in the queue")
        before = (
            h.db_call(m.Photo.select().count),
            sorted(os.listdir(h.settings.blob_dir / "photos")) if (h.settings.blob_dir / "photos").exists() else [],
        )
        assert status_of(upload, h, users[2]) == QUEUE_FULL
        assert (h.db_call(m.Photo.select().count), before[1]) == before  # the refusal stored nothing
        gate.gate.set()
        assert (running.result(), waiting.result()) == (OK, OK)
    assert h.db_call(m.Photo.select().count) == 2
    assert status_of(upload, h, users[2]) == OK  # the queue has room again
    assert held(h) == NOTHING_HELD


def test_the_pixel_budget_holds_an_upload_that_does_not_fit_and_refuses_it_after_the_wait(gated):
    # 512 x 512 = 262 144 pixels each: one fits in the budget, two do not, though a thread is free
    h, gate = gated(
        verifier_workers=2,
        upload_max_pixels=300_000,
        verify_max_pixels_in_flight=300_000,
        verify_queue_wait_seconds=0.5,
    )
    one, two = h.sign_up("pix1@example.com"), h.sign_up("pix2@example.com")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = in_background(pool, upload, h, one)
        wait_for(lambda: gate.inside == 1, 30, "one upload inside verification")
        assert held(h)[1] == {"waiting": 0, "running": 1, "pixels": 512 * 512}
        assert status_of(upload, h, two) == QUEUE_FULL  # waited for the budget, which the first one kept
        assert gate.inside == 1  # it was never decoded alongside the first
        # a file refused before decoding reserves nothing and is not held up by the budget
        assert status_of(upload, h, two, images.decompression_bomb()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "IMAGE_TOO_LARGE",
        )
        gate.gate.set()
        assert first.result() == OK
    assert status_of(upload, h, two) == OK
    assert held(h) == NOTHING_HELD


def test_the_verify_queue_is_first_come_first_served(gated):
    """A small upload that would fit the budget does not overtake a large one already waiting for it."""
    h, gate = gated(
        verifier_workers=3, upload_max_pixels=300_000, verify_max_pixels_in_flight=300_000, verify_queue_wait_seconds=60
    )
    users = [h.sign_up(f"line{i}@example.com") for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = in_background(pool, upload, h, users[0])  # 512 x 512: most of the budget
        wait_for(lambda: gate.inside == 1, 30, "the first upload inside verification")
        second = in_background(pool, upload, h, users[1])  # does not fit beside the first: waits
        wait_for(lambda: held(h)[1]["waiting"] == 1, 30, "the second upload waiting")
        third = in_background(pool, upload, h, users[2], images.noise(128))  # would fit, but is later in line
        wait_for(lambda: held(h)[1]["waiting"] == 2, 30, "the third upload waiting behind the second")
        assert gate.inside == 1
        gate.gate.set()
        assert (first.result(), second.result(), third.result()) == (OK, OK, OK)
    assert held(h) == NOTHING_HELD


def test_a_cancelled_upload_keeps_its_verify_slot_until_its_thread_is_done(gated):
    h, gate = gated(verifier_workers=1, verify_queue_size=0)
    user = h.sign_up("quitter@example.com")
    call = h.photos.UploadPhoto.future(p.UploadPhotoRequest(content=images.one_face()), metadata=user.md)
    wait_for(lambda: gate.inside == 1, 30, "the upload inside verification")
    assert call.cancel()  # the client gives up mid-verification
    assert gate.inside == 1 and held(h)[1]["running"] == 1  # the thread still works on it: the slot stays taken
    assert status_of(upload, h, user) == QUEUE_FULL
    gate.gate.set()
    wait_for(lambda: held(h) == NOTHING_HELD, 30, "the slot given back when the thread finished")
    assert status_of(upload, h, user) == OK


def test_concurrent_uploads_never_exceed_the_photo_quota(database_url, tmp_path):
    """Real threads and the real verifier: every upload passes the early check, the insert's check is atomic."""
    quota, n = 3, 10
    h = start_harness(tmp_path / "data", database_url, max_photos_per_account=quota)
    try:
        user = h.sign_up("quota@example.com")
        payload = images.one_face()
        barrier = threading.Barrier(n)

        def one(_):
            barrier.wait()
            return status_of(upload, h, user, payload)

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            got = Counter(pool.map(one, range(n)))
        assert got == Counter({OK: quota, (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"): n - quota})
        assert h.db_call(m.Photo.select().where(m.Photo.account == user.account_id).count) == quota
        # uploads refused inside the insert's transaction left their blob: orphans, removed by the sweep
        retention = LocalBlobStore(h.settings.blob_dir, Role.RETENTION)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=h.settings.orphan_margin_hours + 1)
        h.db_call(sweep_orphan_blobs, h.db, retention, later)
        assert len(os.listdir(h.settings.blob_dir / "photos")) == quota
    finally:
        h.stop()


def test_replays_of_the_last_upload_the_quota_allows_all_answer_the_first_photo(database_url, tmp_path):
    """One place left under the quota and one request_id sent at once from several threads: every replay gets
    the photo the first one stored, none RATE_LIMITED (the insert's transaction looks for it before counting)."""
    n = 6
    h = start_harness(tmp_path / "data", database_url, max_photos_per_account=1)
    try:
        user = h.sign_up("replays@example.com")
        payload = images.one_face()
        barrier = threading.Barrier(n)

        def one(_):
            barrier.wait()
            try:
                request = p.UploadPhotoRequest(content=payload, request_id="last-one")
                return h.photos.UploadPhoto(request, metadata=user.md).photo.id
            except grpc.RpcError as exc:
                return exc.code(), reason_of(exc)

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            got = list(pool.map(one, range(n)))
        assert len(set(got)) == 1 and isinstance(got[0], str), got
        assert h.db_call(m.Photo.select().count) == 1
    finally:
        h.stop()
