"""The order worker against the real Triton server (nvidia-pytriton wheel) on the tiny base pipeline.

One Triton server per module, and an API server on SQLite then on PostgreSQL, sharing a data folder: the base pipeline, the
blob store (adapters written with the trainer role, read by Triton with the order role; generated photos
written by the worker with the order role, read by the API). Models are made READY with adapters trained
here (tests/support/triton.py), so no trainer runs.

What it proves (issue 5's acceptance story):
* two users order at once: each gets images of their own model only, Triton executes batches holding
  both users' requests, and a worker-made image equals the engine's single-request image (same seed);
* a worker SIGKILLed mid-order: another completes it, every slot exactly once, no refund, and the orphan
  sweep leaves exactly the recorded blobs;
* Triton unreachable: the worker waits and retries (nothing failed or refunded), then completes;
* a model deleted mid-order: its images fail and are refunded, the other model's are made; Triton drops
  the deleted model's adapter from its cache; a deactivated account's order is not served.
* evictions (core/jobs/evictions.py): a deactivated account's adapters leave Triton's cache and come back after
  reactivation; an eviction Triton missed (unreachable) is retried and completed later, after the account's
  purge; an eviction is done only once every replica confirmed it; an image request that was at Triton when
  its account was deactivated requests the eviction again.
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.triton import require_triton, train_tiny_adapters, triton_env

require_triton()

import tritonclient.grpc as grpcclient  # noqa: E402

from faceharmony.core.blobstore.base import Role  # noqa: E402
from faceharmony.core.blobstore.local import LocalBlobStore  # noqa: E402
from faceharmony.core.db import models as m  # noqa: E402
from faceharmony.core.diffusion.adapter_format import parse_adapter_bytes  # noqa: E402
from faceharmony.core.diffusion.engine import BatchedGenerator, GenerationRequest  # noqa: E402
from faceharmony.core.diffusion.pipeline import build_tiny_pipeline, load_base  # noqa: E402
from faceharmony.core.jobs import styles  # noqa: E402
from faceharmony.order_worker.worker import OrderWorker  # noqa: E402
from faceharmony.retention.orphans import sweep_orphan_blobs  # noqa: E402
from faceharmony.triton_launcher.server import free_port, start_triton  # noqa: E402
from faceharmony.v1 import account_pb2 as a  # noqa: E402
from faceharmony.v1 import model_pb2 as mp  # noqa: E402
from faceharmony.v1 import order_pb2 as o  # noqa: E402
from tests.support.harness import start_harness  # noqa: E402
from tests.support.keyrings import make_keyring  # noqa: E402
from tests.support.orders import balance, order, ready_model  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

pytestmark = [pytest.mark.processes, pytest.mark.triton]

BIN = Path(sys.executable).parent
SIZE = 64
STEPS = 3
TRITON_MODEL = "faceharmony_diffusion"
GEN = dict(
    generation_width=SIZE,
    generation_height=SIZE,
    generation_steps=STEPS,
    order_lease_seconds=2.0,
    order_worker_poll_seconds=0.1,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("orders-data")
    build_tiny_pipeline(path / "base-model", seed=0)
    return path


@pytest.fixture(scope="module")
def base(data_dir):
    return load_base(data_dir / "base-model", device="cpu")


@pytest.fixture(scope="module")
def adapters(data_dir, base) -> list[tuple[str, bytes]]:
    keyring = make_keyring(data_dir / "keys")  # the data folder's: the server's, the worker's and Triton's
    store = LocalBlobStore(data_dir / "blobs", Role.TRAINER, keyring)
    return list(train_tiny_adapters(base, store, ranks=(4, 8, 4), key_id=keyring.new_key()).items())


@pytest.fixture(scope="module")
def triton(data_dir, adapters, tmp_path_factory):
    with start_triton(tmp_path_factory.mktemp("triton"), env=triton_env(data_dir), ready_timeout=120) as srv:
        yield srv
        if srv.process.poll() is not None:
            print(srv.log_tail())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def h(request, data_dir, triton):
    """The API server on each backend in turn (the worker's claims, leases and fenced writes run on both)."""
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'db.sqlite3'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.url(cluster.create_database(template=cluster.template))
    harness = start_harness(data_dir, url, triton_url=triton.grpc_url, **GEN)
    yield harness
    harness.stop()


class RunningWorker:
    """An in-process order worker (system clock) in a thread; it shares the server's database object, as the
    models are bound to one database per process."""

    def __init__(self, h, **overrides) -> None:
        from dataclasses import replace

        self.worker = OrderWorker(replace(h.settings, **overrides), worker_id=f"test-{time.monotonic_ns()}", db=h.db)
        self.thread = threading.Thread(target=self.worker.run_forever, daemon=True)

    def __enter__(self) -> OrderWorker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc) -> None:
        self.worker.shutting_down.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def copy_of(h, adapter: tuple[str, bytes], user) -> str:
    """The adapter stored again under a new blob id, sealed with `user`'s key (each model version owns its blob,
    sealed with its owner's key, as the trainer stores it)."""
    key_id = h.db_call(lambda: m.Account.get_by_id(user.account_id).key_id)
    return LocalBlobStore(h.settings.blob_dir, Role.TRAINER).create("models", adapter[1], key_id=key_id)


def get(h, user, order_id) -> o.Order:
    return h.orders.GetOrder(o.GetOrderRequest(id=order_id), metadata=user.md).order


def wait_final(h, user, order_id, timeout: float = 120) -> o.Order:
    final = (o.ORDER_STATE_COMPLETED, o.ORDER_STATE_FAILED)
    return wait_for(lambda: (x := get(h, user, order_id)).state in final and x, timeout, "the order to finish")


def batch_sizes(client) -> dict[int, int]:
    stats = client.get_inference_statistics(TRITON_MODEL, as_json=True)
    return {
        int(b["batch_size"]): int(b["compute_infer"].get("count", 0))
        for b in stats["model_stats"][0].get("batch_stats", [])
    }


def gallery(h, user) -> list[o.GeneratedPhoto]:
    return list(
        h.orders.ListGeneratedPhotos(o.ListGeneratedPhotosRequest(page_size=100), metadata=user.md).generated_photos
    )


def evict_at_triton(h, key: str) -> int:
    """Asks Triton itself to drop a key from its adapter cache: 1 when it held it, 0 when not."""
    client = grpcclient.InferenceServerClient(h.settings.triton_url)
    keys = np.array([[key.encode()]], dtype=object)
    x = grpcclient.InferInput("EVICT_KEYS", list(keys.shape), "BYTES")
    x.set_data_from_numpy(keys)
    return int(
        client.infer(TRITON_MODEL, [x], outputs=[grpcclient.InferRequestedOutput("EVICTED")]).as_numpy("EVICTED")[0, 0]
    )


def evictions_of(h) -> dict[str, tuple[list[str], int, str | None]]:
    """The pending eviction records: model_id:version -> (replicas that confirmed, attempts, last error)."""
    rows = h.db_call(lambda: list(m.ModelEviction.select()))
    return {f"{r.model_id}:{r.version}": (sorted(r.confirmed_by), r.attempts, r.last_error) for r in rows}


def signed_in_again(h, user):
    token = h.accounts.SignIn(a.SignInRequest(email=user.email, code=h.code_for(user.email))).session_token
    return type(user)(user.account_id, user.email, user.name, token)


def download(h, user, photo_id) -> bytes:
    return b"".join(
        c.data for c in h.orders.DownloadGeneratedPhoto(o.DownloadGeneratedPhotoRequest(id=photo_id), metadata=user.md)
    )


def test_two_users_at_once_get_their_own_models_in_shared_batches(h, triton, adapters, base):
    (blob_a, bytes_a), (blob_b, bytes_b), _ = adapters
    ada, bob = h.sign_up("ada-orders@example.com"), h.sign_up("bob-orders@example.com")
    model_a = ready_model(h, ada, copy_of(h, (blob_a, bytes_a), ada))
    model_b = ready_model(h, bob, copy_of(h, (blob_b, bytes_b), bob))
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    before = batch_sizes(client)
    order_a = order(h, ada, [model_a], count=4, style_id="studio")
    order_b = order(h, bob, [model_b], count=4, style_id="oil_painting")
    with RunningWorker(h):
        done_a, done_b = wait_final(h, ada, order_a.id), wait_final(h, bob, order_b.id)
    for done in (done_a, done_b):
        assert (done.state, done.images_done, done.images_failed, done.credits_refunded) == (
            o.ORDER_STATE_COMPLETED,
            4,
            0,
            0,
        )
    assert balance(h, ada) == balance(h, bob) == 6

    grown = {bs: n - before.get(bs, 0) for bs, n in batch_sizes(client).items() if n > before.get(bs, 0)}
    print(f"\nTriton executions by batch size for 8 images of 2 users: {grown}")
    # Each user has 4 images: an execution of more than 4 held requests of both users.
    assert max(grown) > 4, grown

    mine_a, mine_b = gallery(h, ada), gallery(h, bob)
    assert {p.model_id for p in mine_a} == {model_a} and {p.model_id for p in mine_b} == {model_b}
    assert len(mine_a) == len(mine_b) == 4 and not {p.id for p in mine_a} & {p.id for p in mine_b}

    # A worker-made image equals the engine's image of that request alone, with the adapter loaded itself.
    engine = BatchedGenerator(base)
    checked = []
    for user, photos, style_id, adapter in ((ada, mine_a, "studio", bytes_a), (bob, mine_b, "oil_painting", bytes_b)):
        photo = photos[0]
        row = h.db_call(
            lambda photo=photo: (
                m.OrderImage.select().join(m.GeneratedPhoto).where(m.GeneratedPhoto.id == photo.id).get()
            )
        )
        style = styles.get(style_id)
        alone = engine.generate(
            [
                GenerationRequest(
                    style.prompt_for("sks"),
                    parse_adapter_bytes(adapter),
                    style.negative_prompt,
                    int(row.seed),
                    STEPS,
                    7.5,
                    SIZE,
                    SIZE,
                )
            ]
        )[0]
        got = np.asarray(Image.open(io.BytesIO(download(h, user, photo.id))).convert("RGB")).astype(int)
        assert got.shape == (SIZE, SIZE, 3)
        checked.append(int(np.abs(got - alone.image.astype(int)).max()))
    print(f"max uint8 difference, worker image vs single request: {checked}")
    assert max(checked) <= 1
    # ...and the two users' images really differ (the comparison means something).
    pa = np.asarray(Image.open(io.BytesIO(download(h, ada, mine_a[1].id)))).astype(int)
    pb = np.asarray(Image.open(io.BytesIO(download(h, bob, mine_b[1].id)))).astype(int)
    assert np.abs(pa - pb).mean() > 2


def worker_env(h) -> dict[str, str]:
    s = h.settings
    env = triton_env(s.data_dir)
    env.update(
        FACEHARMONY_DATABASE_URL=s.database_url,
        FACEHARMONY_SECRET_KEY=s.secret_key,
        FACEHARMONY_TRITON_URL=s.triton_url,
        FACEHARMONY_GENERATION_WIDTH=str(SIZE),
        FACEHARMONY_GENERATION_HEIGHT=str(SIZE),
        FACEHARMONY_GENERATION_STEPS=str(STEPS),
        FACEHARMONY_ORDER_LEASE_SECONDS="2",
        FACEHARMONY_ORDER_WORKER_POLL_SECONDS="0.1",
        FACEHARMONY_ORDER_WORKER_INFLIGHT="1",  # one image at a time: the kill lands mid-order
        FACEHARMONY_LOG_FORMAT="text",
    )
    return env


def test_a_worker_killed_mid_order_is_completed_by_another_exactly_once(h, adapters, tmp_path):
    user = h.sign_up("killed-order@example.com")
    model = ready_model(h, user, copy_of(h, adapters[2], user))
    placed = order(h, user, [model], count=8)
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([str(BIN / "faceharmony-order-worker")], env=worker_env(h), stdout=log, stderr=log)
    try:
        wait_for(lambda: get(h, user, placed.id).images_done >= 2, 120, "the first images")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = get(h, user, placed.id)
    assert killed_at.state == o.ORDER_STATE_RUNNING and 2 <= killed_at.images_done < 8, killed_at
    with RunningWorker(h):
        done = wait_final(h, user, placed.id)
    assert (done.state, done.images_done, done.images_failed, done.credits_refunded) == (
        o.ORDER_STATE_COMPLETED,
        8,
        0,
        0,
    )
    row = h.db_call(m.Order.get_by_id, placed.id)
    assert row.attempts == 2
    slots = h.db_call(lambda: list(m.OrderImage.select().where(m.OrderImage.order == placed.id)))
    photos = h.db_call(lambda: list(m.GeneratedPhoto.select().where(m.GeneratedPhoto.order == placed.id)))
    assert all(s.state == "done" for s in slots) and sorted(p.image_id for p in photos) == sorted(s.id for s in slots)
    assert balance(h, user) == 10 - 8
    # Blobs an interrupted image left behind are orphans: the sweep removes them and nothing else.
    retention = LocalBlobStore(h.settings.blob_dir, Role.RETENTION)
    import datetime as dt

    sweep_orphan_blobs(h.db, retention, dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    left = {b.blob_id for b in retention.list("generated")}
    everyone = h.db_call(lambda: {x for p in m.GeneratedPhoto.select() for x in (p.blob_id, p.preview_blob_id)})
    assert left == everyone


class Proxy:
    """A TCP forwarder to Triton that can be switched on later: until then nothing listens on its port."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self.sock: socket.socket | None = None
        self.accepted = 0  # connections forwarded so far

    def start(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def test_triton_unavailable_the_worker_waits_then_completes(h, adapters):
    user = h.sign_up("triton-down@example.com")
    placed = order(h, user, [ready_model(h, user, copy_of(h, adapters[0], user))], count=2)
    proxy = Proxy(h.settings.triton_url)
    try:
        with RunningWorker(h, triton_url=f"127.0.0.1:{proxy.port}"):
            wait_for(lambda: get(h, user, placed.id).state == o.ORDER_STATE_RUNNING, 30, "the claim")
            time.sleep(2.5)  # several retries, more than a lease: heartbeats keep the order
            waiting = get(h, user, placed.id)
            assert (waiting.state, waiting.images_done, waiting.images_failed, waiting.credits_refunded) == (
                o.ORDER_STATE_RUNNING,
                0,
                0,
                0,
            )
            proxy.start()
            done = wait_final(h, user, placed.id, timeout=60)
    finally:
        proxy.close()
    assert (done.state, done.images_done, done.images_failed) == (o.ORDER_STATE_COMPLETED, 2, 0)
    assert h.db_call(m.Order.get_by_id, placed.id).attempts == 1


def test_a_model_deleted_mid_order_stops_its_images_and_is_evicted(h, adapters):
    user = h.sign_up("delete-mid@example.com")
    keep, drop = (
        ready_model(h, user, copy_of(h, adapters[0], user)),
        ready_model(h, user, copy_of(h, adapters[1], user)),
    )
    warm = order(h, user, [drop], count=1)  # puts the model's adapter into Triton's cache
    with RunningWorker(h):
        assert wait_final(h, user, warm.id).state == o.ORDER_STATE_COMPLETED
    placed = order(h, user, [keep, drop], count=2)
    assert balance(h, user) == 10 - 1 - 4
    h.models.DeleteModel(mp.DeleteModelRequest(id=drop), metadata=user.md)
    with RunningWorker(h) as worker:
        done = wait_final(h, user, placed.id)
        assert worker.sweep_evictions() == 0  # already evicted by the worker's own sweep
    assert (done.state, done.images_done, done.images_failed, done.credits_refunded) == (
        o.ORDER_STATE_COMPLETED,
        2,
        2,
        2,
    )
    assert balance(h, user) == 10 - 1 - 2
    assert {p.model_id for p in gallery(h, user) if p.order_id == placed.id} == {keep}
    errors = h.db_call(
        lambda: sorted(s.error or "" for s in m.OrderImage.select().where(m.OrderImage.order == placed.id))
    )
    assert errors == ["", "", "MODEL_DELETED", "MODEL_DELETED"]
    # The deleted model's version was in Triton's cache and is gone from it: asking again evicts nothing.
    assert evict_at_triton(h, f"{drop}:1") == 0


def test_a_deactivated_accounts_order_is_not_served_and_refunded(h, adapters):
    user = h.sign_up("leaving@example.com")
    placed = order(h, user, [ready_model(h, user, copy_of(h, adapters[0], user))], count=3)
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    with RunningWorker(h):
        wait_for(lambda: h.db_call(m.Order.get_by_id, placed.id).state == "failed", 60, "the order to fail")
    row = h.db_call(m.Order.get_by_id, placed.id)
    assert (row.images_done, row.images_failed, row.credits_refunded, row.error) == (0, 3, 3, "ACCOUNT_DEACTIVATED")
    assert h.db_call(lambda: m.GeneratedPhoto.select().where(m.GeneratedPhoto.order == placed.id).count()) == 0


def test_an_adapter_missing_from_the_store_fails_its_images_through_tritons_answer(h):
    from faceharmony.core import ids

    user = h.sign_up("lost-adapter@example.com")
    placed = order(h, user, [ready_model(h, user, ids.new_id())], count=2)  # the row names a blob that is not there
    with RunningWorker(h):
        done = wait_final(h, user, placed.id)
    assert (done.state, done.images_failed, done.credits_refunded) == (o.ORDER_STATE_FAILED, 2, 2)
    assert h.db_call(m.Order.get_by_id, placed.id).error == "MODEL_DELETED"  # Triton answered NOT_FOUND
    assert balance(h, user) == 10


def test_the_user_cli_orders_watches_downloads_and_rejects(h, adapters, tmp_path):
    import json
    import os

    user = h.sign_up("cli-orders@example.com")
    model = ready_model(h, user, copy_of(h, adapters[1], user))
    session = tmp_path / "session"
    session.write_text(user.token)
    env = {
        **os.environ,
        "FACEHARMONY_CLIENT_SERVER": f"127.0.0.1:{h.port}",
        "FACEHARMONY_CLIENT_SESSION_FILE": str(session),
    }

    def cli(*argv: str) -> str:
        done = subprocess.run([str(BIN / "faceharmony"), *argv], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "oil_painting" in cli("styles")
    placed = json.loads(cli("--json", "order", "--style", "comic", "--count", "2", model))
    with RunningWorker(h):
        watched = [json.loads(line)["order"] for line in cli("--json", "watch-order", placed["id"]).splitlines()]
    assert (watched[-1]["state"], watched[-1]["images_done"], watched[-1]["images_failed"]) == (
        "ORDER_STATE_COMPLETED",
        2,
        0,
    ), watched
    photos = json.loads(cli("--json", "generated", "--order", placed["id"]))["generated_photos"]
    assert len(photos) == 2
    cli("download", photos[0]["id"], str(tmp_path / "a.png"))
    assert Image.open(tmp_path / "a.png").size == (SIZE, SIZE)
    assert (
        "Saved" in cli("preview", photos[1]["id"], str(tmp_path / "b.jpg"))
        and Image.open(tmp_path / "b.jpg").format == "JPEG"
    )
    assert json.loads(cli("--json", "reject", photos[1]["id"]))["state"] == "GENERATED_PHOTO_STATE_REJECTED"
    states = {p["id"]: p["state"] for p in json.loads(cli("--json", "generated"))["generated_photos"]}
    assert states[photos[0]["id"]] == "GENERATED_PHOTO_STATE_DOWNLOADED"
    failed = subprocess.run(
        [str(BIN / "faceharmony"), "order", "--style", "nope", model], env=env, capture_output=True, text=True
    )
    assert failed.returncode == 1 and "(UNKNOWN_STYLE)" in failed.stderr


def test_a_restored_model_deleted_again_is_evicted_again(h, adapters):
    from faceharmony.v1 import admin_pb2 as ad

    user, staff = h.sign_up("restore-evict@example.com"), h.staff("support")
    model = ready_model(h, user, copy_of(h, adapters[2], user))
    sweeper = OrderWorker(h.settings, worker_id="sweeper", db=h.db)

    def use_it():
        placed = order(h, user, [model], count=1)
        with RunningWorker(h):
            assert wait_final(h, user, placed.id).state == o.ORDER_STATE_COMPLETED  # the adapter is in Triton's cache

    use_it()
    h.models.DeleteModel(mp.DeleteModelRequest(id=model), metadata=user.md)
    assert sweeper.sweep_evictions() == 1
    h.admin.RestoreModel(ad.RestoreModelRequest(id=model), metadata=staff.md)
    assert sweeper.sweep_evictions() == 0  # nothing pending
    use_it()
    h.models.DeleteModel(mp.DeleteModelRequest(id=model), metadata=user.md)
    assert sweeper.sweep_evictions() == 1
    sweeper.close()


def test_two_workers_share_the_queue_and_make_every_image_once(h, adapters):
    users = [h.sign_up(f"two-workers-{i}@example.com") for i in range(3)]
    placed = [(u, order(h, u, [ready_model(h, u, copy_of(h, adapters[i], u))], count=3)) for i, u in enumerate(users)]
    with (
        RunningWorker(h, order_worker_orders=2, order_worker_inflight=4),
        RunningWorker(h, order_worker_orders=2, order_worker_inflight=4),
    ):
        done = [wait_final(h, u, x.id) for u, x in placed]
    assert all((d.state, d.images_done, d.images_failed) == (o.ORDER_STATE_COMPLETED, 3, 0) for d in done)
    ids_ = [x.id for _, x in placed]
    rows = h.db_call(lambda: list(m.GeneratedPhoto.select().where(m.GeneratedPhoto.order.in_(ids_))))
    assert len(rows) == 9 and len({r.image_id for r in rows}) == 9
    owners = h.db_call(lambda: {r.lease_owner for r in m.Order.select().where(m.Order.id.in_(ids_))})
    assert owners == {None}  # every lease released


def used_model(h, user, adapter) -> str:
    """A READY model whose adapter is in Triton's cache (one image made)."""
    model = ready_model(h, user, copy_of(h, adapter, user))
    placed = order(h, user, [model], count=1)
    with RunningWorker(h):
        assert wait_final(h, user, placed.id).state == o.ORDER_STATE_COMPLETED
    return model


def test_a_deactivated_accounts_adapters_leave_triton_and_come_back_after_reactivation(h, adapters):
    user = h.sign_up("deactivated-evict@example.com")
    model = used_model(h, user, adapters[0])
    key = f"{model}:1"
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    assert evictions_of(h).get(key) == ([], 0, None)  # written with the deactivation
    sweeper = OrderWorker(h.settings, worker_id="sweeper", db=h.db)
    try:
        assert sweeper.sweep_evictions() == 1  # Triton held the adapter and dropped it
        assert key not in evictions_of(h)  # every replica confirmed: done
        assert evict_at_triton(h, key) == 0  # Triton's cache no longer holds it

        again = signed_in_again(h, user)
        h.accounts.ReactivateAccount(a.ReactivateAccountRequest(), metadata=again.md)
        placed = order(h, again, [model], count=1)
        with RunningWorker(h):
            assert wait_final(h, again, placed.id).state == o.ORDER_STATE_COMPLETED  # fetched again on demand
        assert evict_at_triton(h, key) == 1
    finally:
        sweeper.close()


def test_an_eviction_triton_missed_is_retried_and_completed_after_the_accounts_purge(h, adapters):
    """Triton unreachable at deactivation: the eviction stays pending; the purge does not wait for it (rows and
    blobs go on time) and its record outlives them; once Triton answers, the next sweep completes it."""
    import datetime as dt
    from dataclasses import replace

    from faceharmony.retention.daemon import Retention

    user = h.sign_up("missed-evict@example.com")
    model = used_model(h, user, adapters[1])
    key = f"{model}:1"
    proxy = Proxy(h.settings.triton_url)  # switched off: nothing listens
    replica = f"127.0.0.1:{proxy.port}"
    worker = OrderWorker(replace(h.settings, triton_url=replica), worker_id="behind-proxy", db=h.db)
    try:
        h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
        assert worker.sweep_evictions() == 0
        assert worker.sweep_evictions() == 0
        assert evictions_of(h).get(key) == ([], 2, "UNAVAILABLE")  # not confirmed: asked again at each sweep

        daemon = Retention(h.settings, h.db, LocalBlobStore(h.settings.blob_dir, Role.RETENTION), clock=h.clock)
        assert (
            h.db_call(daemon.run_once, h.clock.now() + dt.timedelta(days=h.settings.account_grace_days + 1))["accounts"]
            >= 1
        )
        assert h.db_call(lambda: m.UserModel.select().where(m.UserModel.id == model).count()) == 0
        assert evictions_of(h).get(key) == ([], 0, None)  # requested again by the purge, and kept after it
        assert daemon.metrics.get("evictions_pending") >= 1

        proxy.start()  # the worker's channel reconnects after its gRPC backoff: the sweeps go on until then
        dropped: list[int] = []
        wait_for(
            lambda: dropped.append(worker.sweep_evictions()) or key not in evictions_of(h),
            180,
            "the eviction to complete (after gRPC's reconnect backoff)",
        )
        assert sum(dropped) >= 1  # Triton still held the purged account's adapter: dropped now
        assert evict_at_triton(h, key) == 0
    finally:
        proxy.close()
        worker.close()


def test_an_eviction_is_done_only_once_every_replica_confirmed_it(h, adapters):
    """Two replicas, one unreachable: the record keeps the confirmation of the one that answered, and another
    worker (or this one after a restart) completes it once the other answers, asking only that one."""
    user = h.sign_up("replicas-evict@example.com")
    model = used_model(h, user, adapters[2])
    key = f"{model}:1"
    proxy = Proxy(h.settings.triton_url)
    replicas = [h.settings.triton_url, f"127.0.0.1:{proxy.port}"]
    first = OrderWorker(h.settings, worker_id="first", db=h.db, replicas=replicas)
    second = OrderWorker(h.settings, worker_id="second", db=h.db, replicas=replicas)
    try:
        h.models.DeleteModel(mp.DeleteModelRequest(id=model), metadata=user.md)
        assert first.sweep_evictions() == 1  # the reachable replica dropped it
        assert evictions_of(h).get(key) == ([h.settings.triton_url], 1, "UNAVAILABLE")
        proxy.start()  # gRPC reconnects to it after its backoff: the second worker's sweeps go on until then
        dropped: list[int] = []
        wait_for(
            lambda: dropped.append(second.sweep_evictions()) or key not in evictions_of(h),
            180,
            "the eviction to complete (after gRPC's reconnect backoff)",
        )
        assert sum(dropped) == 0  # only the second replica was asked (here the same server: nothing left to drop)
    finally:
        proxy.close()
        first.close()
        second.close()


def test_an_image_request_at_triton_when_the_account_is_deactivated_requests_the_eviction_again(h, adapters):
    """The account is deactivated, and the eviction swept, while an image request is on its way to Triton:
    Triton fetches the adapter again for it; the worker, finding the model unservable when it records the
    image, requests the eviction again."""
    from faceharmony.order_worker.worker import TritonImages

    user = h.sign_up("in-flight-evict@example.com")
    model = ready_model(h, user, copy_of(h, adapters[0], user))
    key = f"{model}:1"
    placed = order(h, user, [model], count=1)
    sweeper = OrderWorker(h.settings, worker_id="sweeper", db=h.db)

    class DeactivatedOnTheWay(TritonImages):
        def generate(self, **kwargs):
            h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
            sweeper.sweep_evictions()  # completes the record: Triton does not hold the adapter yet
            assert key not in evictions_of(h)
            return super().generate(**kwargs)

    s = h.settings
    worker = OrderWorker(
        s,
        worker_id="in-flight",
        db=h.db,
        triton=DeactivatedOnTheWay(s.triton_url, s.triton_model, s.triton_timeout_seconds),
    )
    try:
        assert worker.run_once()
        row = h.db_call(m.Order.get_by_id, placed.id)
        assert (row.images_done, row.images_failed, row.credits_refunded) == (0, 1, 1)
        assert evictions_of(h).get(key) == ([], 0, None)  # requested again by the worker
        assert sweeper.sweep_evictions() == 1  # Triton had fetched the adapter again: dropped
    finally:
        worker.close()
        sweeper.close()


def test_an_image_that_does_not_open_at_the_worker_fails_alone_with_a_stable_reason(h, adapters):
    """Triton answers each image sealed with the adapter's data key (IMAGE_SEALED), and the worker opens it:
    bytes altered on the way fail that image CIPHERTEXT_INVALID; a key shredded between Triton's answer and the
    worker's open (its owner's purge) fails it MODEL_DELETED; both are refunded, nothing crashes."""
    from faceharmony.core.db.connection import write_transaction
    from faceharmony.core.keys.keyring import keyring
    from faceharmony.order_worker.worker import TritonImages

    class Answer:  # what tritonclient's InferResult offers the worker
        def __init__(self, arr) -> None:
            self.arr = arr

        def as_numpy(self, name):
            return self.arr

    class OnTheWay(TritonImages):
        """Triton's real answer, changed on its way to the worker."""

        def __init__(self, s, change) -> None:
            super().__init__(s.triton_url, s.triton_model, s.triton_timeout_seconds)
            self.change = change

        def _call(self, inputs, outputs):
            return self.change(super()._call(inputs, outputs))

    def altered(result):
        sealed = bytearray(result.as_numpy("IMAGE_SEALED")[0, 0])
        sealed[len(sealed) // 2] ^= 1
        return Answer(np.array([[bytes(sealed)]], dtype=object))

    user = h.sign_up("sealed-answer@example.com")
    adapter_key = keyring.new_key()  # the version's own key: shredding it touches nothing else of the user's
    blob = LocalBlobStore(h.settings.blob_dir, Role.TRAINER).create("models", adapters[0][1], key_id=adapter_key)
    model = ready_model(h, user, blob)

    def own_key() -> None:
        with write_transaction(h.db):
            m.ModelVersion.update(key_id=adapter_key).where(m.ModelVersion.model == model).execute()

    h.db_call(own_key)

    def shredded(result):
        keyring.shred(adapter_key)
        return result

    for change, reason in ((altered, "CIPHERTEXT_INVALID"), (shredded, "MODEL_DELETED")):
        placed = order(h, user, [model], count=1)
        worker = OrderWorker(h.settings, worker_id=f"sealed-{reason}", db=h.db, triton=OnTheWay(h.settings, change))
        try:
            assert worker.run_once()
        finally:
            worker.close()
        row = h.db_call(m.Order.get_by_id, placed.id)
        assert (row.images_done, row.images_failed, row.credits_refunded, row.error) == (0, 1, 1, reason)
    assert balance(h, user) == 10


def test_a_models_replica_that_is_down_fails_over_to_the_next_and_gets_its_models_back(h, adapters):
    """Rendezvous routing over two replicas, the model's own one down: its images are made by the next replica in
    its hash order (each slot once, nothing refunded); once its replica answers again the model goes back to it."""
    from faceharmony.order_worker.routing import hash_order

    user = h.sign_up("failover@example.com")
    model = ready_model(h, user, copy_of(h, adapters[0], user))
    key = f"{model}:1"
    proxies = []
    while not proxies or hash_order([h.settings.triton_url, f"127.0.0.1:{proxies[-1].port}"], key)[0] == (
        h.settings.triton_url
    ):
        proxies.append(Proxy(h.settings.triton_url))  # switched off: nothing listens on its port
    proxy = proxies[-1]
    replicas = [h.settings.triton_url, f"127.0.0.1:{proxy.port}"]
    try:
        with RunningWorker(h, triton_replicas=",".join(replicas)) as worker:
            placed = order(h, user, [model], count=2)
            final = wait_final(h, user, placed.id)
            assert final.state == o.ORDER_STATE_COMPLETED and final.images_failed == 0
            assert h.db_call(lambda: m.GeneratedPhoto.select().where(m.GeneratedPhoto.order == placed.id).count()) == 2
            assert worker.triton.router.order(key)[0] == h.settings.triton_url  # its replica is marked down
            proxy.start()
            assert proxy.accepted == 0

            def back() -> bool:  # after the down while (and gRPC's reconnect backoff) the model returns to it
                if worker.triton.router.is_down(replicas[1]):
                    return False  # no order until the while is over: the next one is the probe (credits are few)
                again = order(h, user, [model], count=1)
                assert wait_final(h, user, again.id).state == o.ORDER_STATE_COMPLETED
                return proxy.accepted > 0 and not worker.triton.router.is_down(replicas[1])

            wait_for(back, 180, "the model to come back to its replica")
            assert worker.triton.router.order(key)[0] == replicas[1]
    finally:
        proxy.close()


def triton_metric(triton, name: str) -> float:
    """A series' value on Triton's metrics port (Prometheus text; 0 when absent)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith(name + "{"))


def test_triton_reports_its_adapter_cache_on_its_metrics_port(h, triton, adapters):
    """A new model's two images: one fetch from the blob store, then a hit; entries and bytes held are gauges."""
    user = h.sign_up("cache-metrics@example.com")
    model = ready_model(h, user, copy_of(h, adapters[0], user))
    fetches = triton_metric(triton, "faceharmony_adapter_cache_fetches_total")
    hits = triton_metric(triton, "faceharmony_adapter_cache_hits_total")
    with RunningWorker(h):
        placed = order(h, user, [model], count=2)
        assert wait_final(h, user, placed.id).state == o.ORDER_STATE_COMPLETED
    assert triton_metric(triton, "faceharmony_adapter_cache_fetches_total") == fetches + 1
    assert triton_metric(triton, "faceharmony_adapter_cache_hits_total") >= hits + 1
    assert triton_metric(triton, "faceharmony_adapter_cache_entries") >= 1
    assert triton_metric(triton, "faceharmony_adapter_cache_bytes") > 0
