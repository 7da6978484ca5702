"""Personal models through the API (P10-P13) and the training job queue, on both database backends. Training itself is exercised in test_training.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import grpc

from faceharmony.core import ids
from faceharmony.core.db import models as m
from faceharmony.core.jobs.training import TrainingQueue
from faceharmony.v1 import admin_pb2 as ad
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import photo_pb2 as p
from tests.support import images
from tests.support.harness import status_of


def upload_photos(h, user, n=4) -> list[str]:
    payload = images.one_face()
    return [h.photos.UploadPhoto(p.UploadPhotoRequest(content=payload), metadata=user.md).photo.id for _ in range(n)]


def create(h, user, photo_ids, **kw):
    return h.models.CreateModel(
        mp.CreateModelRequest(display_name=kw.pop("name", "Me"), photo_ids=photo_ids, **kw), metadata=user.md
    ).model


def test_create_model_from_own_photos_queues_training(harness):
    user = harness.sign_up("model@example.com")
    photo_ids = upload_photos(harness, user)
    model = create(harness, user, photo_ids, request_id="m-1")
    assert model.state == mp.MODEL_STATE_QUEUED and sorted(model.photo_ids) == sorted(photo_ids)
    assert model.trigger_token == "sks" and model.progress == 0
    again = create(harness, user, photo_ids, request_id="m-1")
    assert again.id == model.id
    assert harness.db_call(m.TrainingJob.select().count) == 1
    listed = harness.photos.ListPhotos(p.ListPhotosRequest(), metadata=user.md).photos
    assert all(x.model_id == model.id and not x.HasField("expire_time") for x in listed)  # P11: kept with the model
    assert harness.models.GetModel(mp.GetModelRequest(id=model.id), metadata=user.md).model.id == model.id
    assert [x.id for x in harness.models.ListModels(mp.ListModelsRequest(), metadata=user.md).models] == [model.id]


def test_bad_model_requests(harness):
    owner, other = harness.sign_up("own-m@example.com"), harness.sign_up("other-m@example.com")
    mine = upload_photos(harness, owner, 5)
    theirs = upload_photos(harness, other, 1)
    before = harness.db_call(lambda: (m.UserModel.select().count(), m.TrainingJob.select().count()))
    cases = [
        (mine[:3], {}, (grpc.StatusCode.INVALID_ARGUMENT, "TOO_FEW_PHOTOS")),
        (mine[:3] + theirs, {}, (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")),
        (mine[:3] + [ids.new_id()], {}, (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")),
        (mine[:3] + ["nope"], {}, (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID")),
        (mine[:4] + mine[:1], {}, (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")),
        (mine[:4], {"name": ""}, (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DISPLAY_NAME")),
        (mine * 5, {}, (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")),
    ]
    for photo_ids, kw, expected in cases:
        assert status_of(create, harness, owner, photo_ids, **kw) == expected, (len(photo_ids), kw)
    assert harness.db_call(lambda: (m.UserModel.select().count(), m.TrainingJob.select().count())) == before
    harness.photos.DeletePhoto(p.DeletePhotoRequest(id=mine[4]), metadata=owner.md)
    assert status_of(create, harness, owner, mine[1:5]) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")  # deleted photo
    model = create(harness, owner, mine[:4])
    assert status_of(create, harness, owner, mine[:4]) == (grpc.StatusCode.FAILED_PRECONDITION, "PHOTO_NOT_USABLE")
    nf = (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert status_of(harness.models.GetModel, mp.GetModelRequest(id=model.id), metadata=other.md) == nf
    assert status_of(harness.models.DeleteModel, mp.DeleteModelRequest(id=model.id), metadata=other.md) == nf
    assert status_of(harness.models.RetrainModel, mp.RetrainModelRequest(id=model.id), metadata=other.md) == nf
    assert harness.models.ListModels(mp.ListModelsRequest(), metadata=other.md).models == []
    assert status_of(harness.models.RetrainModel, mp.RetrainModelRequest(id=model.id), metadata=owner.md) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "MODEL_BUSY",
    )


def test_delete_hides_at_once_and_support_restores_within_grace(harness):
    user = harness.sign_up("del-m@example.com")
    model = create(harness, user, upload_photos(harness, user))
    deleted = harness.models.DeleteModel(mp.DeleteModelRequest(id=model.id), metadata=user.md).model
    assert deleted.state == mp.MODEL_STATE_PENDING_DELETION
    assert deleted.purge_after.ToDatetime(tzinfo=dt.UTC) == harness.clock.now() + dt.timedelta(days=30)
    nf = (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert status_of(harness.models.GetModel, mp.GetModelRequest(id=model.id), metadata=user.md) == nf
    assert harness.models.ListModels(mp.ListModelsRequest(), metadata=user.md).models == []
    assert status_of(harness.models.RetrainModel, mp.RetrainModelRequest(id=model.id), metadata=user.md) == nf
    assert harness.db_call(lambda: [j.state for j in m.TrainingJob.select()]) == ["cancelled"]  # training stopped
    staff = harness.staff("support")
    pending = harness.admin.ListPendingDeletionModels(
        ad.ListPendingDeletionModelsRequest(account_id=user.account_id), metadata=staff.md
    )
    assert [x.id for x in pending.models] == [model.id]
    assert status_of(harness.admin.RestoreModel, ad.RestoreModelRequest(id=model.id), metadata=user.md) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    harness.clock.advance(days=30, seconds=-1)
    restored = harness.admin.RestoreModel(ad.RestoreModelRequest(id=model.id), metadata=staff.md).model
    assert restored.state == mp.MODEL_STATE_QUEUED  # it never finished training: queued again
    assert (
        harness.models.GetModel(mp.GetModelRequest(id=model.id), metadata=user.md).model.state == mp.MODEL_STATE_QUEUED
    )
    harness.models.DeleteModel(mp.DeleteModelRequest(id=model.id), metadata=user.md)
    harness.clock.advance(days=30)
    staff = harness.staff("support")  # 60 days on: sessions have expired
    assert status_of(harness.admin.RestoreModel, ad.RestoreModelRequest(id=model.id), metadata=staff.md) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "GRACE_PERIOD_OVER",
    )
    admin = harness.staff("admin")
    kinds = {
        e.kind for e in harness.admin.GetAuditLog(ad.GetAuditLogRequest(subject_id=model.id), metadata=admin.md).events
    }
    assert {"MODEL_DELETED", "MODEL_RESTORED"} <= kinds


def test_restore_queues_an_interrupted_retrain_again(harness):
    user = harness.sign_up("restore-retrain@example.com")
    model_id, _ = make_job(harness, user)
    queue = TrainingQueue(harness.db, harness.clock, lease_seconds=60)
    staff = harness.staff("support")
    first = harness.db_call(queue.claim, "w")
    harness.db_call(queue.start, first)
    assert harness.db_call(queue.record_version, first, ids.new_id(), ids.new_id(), "f" * 64, ids.new_id()) == 1

    def delete_and_restore():
        harness.models.DeleteModel(mp.DeleteModelRequest(id=model_id), metadata=user.md)
        return harness.admin.RestoreModel(ad.RestoreModelRequest(id=model_id), metadata=staff.md).model

    def jobs():
        return sorted(
            harness.db_call(
                lambda: [(j.kind, j.state) for j in m.TrainingJob.select().where(m.TrainingJob.model == model_id)]
            )
        )

    restored = delete_and_restore()  # a trained model at rest: ready again, nothing queued
    assert (restored.state, restored.version, restored.progress) == (mp.MODEL_STATE_READY, 1, 1.0)
    assert jobs() == [("train", "succeeded")]
    harness.models.RetrainModel(mp.RetrainModelRequest(id=model_id), metadata=user.md)
    retrain = harness.db_call(queue.claim, "w")
    assert harness.db_call(queue.start, retrain).state == "training"
    restored = (
        delete_and_restore()
    )  # deleted while retraining: the deletion cancelled the job, the restore queues it again
    assert (restored.state, restored.version, restored.progress) == (mp.MODEL_STATE_QUEUED, 1, 0.0)
    assert harness.db_call(queue.heartbeat, retrain, 0.5) is False
    assert jobs() == [("retrain", "cancelled"), ("retrain", "queued"), ("train", "succeeded")]
    restored = delete_and_restore()  # deleted while queued: queued again, still one live job
    assert restored.state == mp.MODEL_STATE_QUEUED
    assert jobs() == [("retrain", "cancelled"), ("retrain", "cancelled"), ("retrain", "queued"), ("train", "succeeded")]
    again = harness.db_call(queue.claim, "w")
    assert harness.db_call(queue.start, again) is not None
    assert harness.db_call(queue.record_version, again, ids.new_id(), ids.new_id(), "f" * 64, ids.new_id()) == 2
    assert (
        harness.models.GetModel(mp.GetModelRequest(id=model_id), metadata=user.md).model.state == mp.MODEL_STATE_READY
    )


def trained_model(h, user) -> str:
    """A READY model (version 1) of the user's, its training job run by hand."""
    model_id, _ = make_job(h, user)
    queue = TrainingQueue(h.db, h.clock, lease_seconds=60)
    claim = h.db_call(queue.claim, "w")
    h.db_call(queue.start, claim)
    assert h.db_call(queue.record_version, claim, ids.new_id(), ids.new_id(), "f" * 64, ids.new_id()) == 1
    return model_id


def test_retrain_is_refused_when_retention_left_too_few_photos(harness):
    user = harness.sign_up("purged@example.com")
    model_id = trained_model(harness, user)
    # FACEHARMONY_PURGE_PHOTOS_AFTER_TRAINING: retention marks a READY model's photos deleted; here one of four so far
    photo = harness.db_call(lambda: m.Photo.select().where(m.Photo.model_id == model_id).first())
    harness.db_call(lambda: m.Photo.update(deleted_at=harness.clock.now()).where(m.Photo.id == photo.id).execute())
    assert status_of(harness.models.RetrainModel, mp.RetrainModelRequest(id=model_id), metadata=user.md) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOO_FEW_PHOTOS",
    )
    got = harness.models.GetModel(mp.GetModelRequest(id=model_id), metadata=user.md).model
    assert (got.state, got.version) == (mp.MODEL_STATE_READY, 1)  # unchanged, and no job that could only fail
    assert harness.db_call(
        lambda: [j.state for j in m.TrainingJob.select().where(m.TrainingJob.model == model_id)]
    ) == ["succeeded"]


def test_retrain_is_idempotent_on_request_id(harness):
    user = harness.sign_up("retrain-again@example.com")
    model_id = trained_model(harness, user)
    jobs = lambda: harness.db_call(  # noqa: E731
        lambda: sorted(j.kind for j in m.TrainingJob.select().where(m.TrainingJob.model == model_id))
    )
    request = mp.RetrainModelRequest(id=model_id, request_id="retrain-1")
    first = harness.models.RetrainModel(request, metadata=user.md).model
    assert first.state == mp.MODEL_STATE_QUEUED
    # The same request again (a retry after a lost reply): the model, not MODEL_BUSY, and no second job.
    again = harness.models.RetrainModel(request, metadata=user.md).model
    assert (again.id, again.state) == (model_id, mp.MODEL_STATE_QUEUED)
    assert jobs() == ["retrain", "train"]
    # Another request while it trains is refused; a bad request_id is refused before anything is looked at.
    other = mp.RetrainModelRequest(id=model_id, request_id="retrain-2")
    assert status_of(harness.models.RetrainModel, other, metadata=user.md) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "MODEL_BUSY",
    )
    bad = mp.RetrainModelRequest(id=model_id, request_id="no spaces allowed")
    assert status_of(harness.models.RetrainModel, bad, metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    # Another user's model stays NOT_FOUND even with the owner's request_id.
    stranger = harness.sign_up("retrain-stranger@example.com")
    assert status_of(harness.models.RetrainModel, request, metadata=stranger.md)[0] == grpc.StatusCode.NOT_FOUND
    assert jobs() == ["retrain", "train"]


# --- the job queue ------------------------------------------------------------------------------


def make_job(h, user):
    model = create(h, user, upload_photos(h, user))
    return model.id, h.db_call(lambda: m.TrainingJob.get(m.TrainingJob.model == model.id).id)


def test_lease_expiry_hands_the_job_to_another_worker_and_only_the_holder_can_finish(harness):
    user = harness.sign_up("lease@example.com")
    model_id, job_id = make_job(harness, user)
    queue = TrainingQueue(harness.db, harness.clock, lease_seconds=60)
    a = harness.db_call(queue.claim, "worker-a")
    assert a.job_id == job_id and a.attempt == 1
    assert harness.db_call(queue.claim, "worker-b") is None  # held
    assert harness.db_call(queue.start, a).state == "training"
    harness.clock.advance(seconds=61)  # worker-a stalls past its lease
    b = harness.db_call(queue.claim, "worker-b")
    assert b.job_id == job_id and b.attempt == 2
    assert harness.db_call(queue.heartbeat, a, 0.5) is False
    assert harness.db_call(queue.record_version, a, ids.new_id(), ids.new_id(), "f" * 64, ids.new_id()) is None
    assert harness.db_call(queue.start, b) is not None
    assert harness.db_call(queue.heartbeat, b, 0.5) is True
    assert harness.db_call(lambda: m.UserModel.get_by_id(model_id).progress) == 0.5
    assert harness.db_call(queue.record_version, b, ids.new_id(), ids.new_id(), "f" * 64, ids.new_id()) == 1
    assert harness.db_call(queue.record_version, b, ids.new_id(), ids.new_id(), "f" * 64, ids.new_id()) is None
    assert harness.db_call(m.ModelVersion.select().count) == 1
    model = harness.models.GetModel(mp.GetModelRequest(id=model_id), metadata=user.md).model
    assert (model.state, model.version, model.progress) == (mp.MODEL_STATE_READY, 1, 1.0)
    assert harness.db_call(lambda: m.TrainingJob.get_by_id(job_id).state) == "succeeded"
    retrained = harness.models.RetrainModel(mp.RetrainModelRequest(id=model_id), metadata=user.md).model
    assert retrained.state == mp.MODEL_STATE_QUEUED


def test_a_stale_claim_of_the_same_worker_is_fenced_out_after_a_reclaim(harness):
    """Worker ids are host:pid: a process that claims a job it held before must not be able to use its old claim."""
    user = harness.sign_up("fence@example.com")
    model_id, job_id = make_job(harness, user)
    queue = TrainingQueue(harness.db, harness.clock, lease_seconds=60)
    progress = lambda: harness.db_call(lambda: m.UserModel.get_by_id(model_id).progress)  # noqa: E731
    # Handed back without using an attempt, then claimed again by the same worker: the same attempt number.
    old = harness.db_call(queue.claim, "host:1")
    assert harness.db_call(queue.start, old) is not None
    assert harness.db_call(lambda: queue.fail(old, "INTERRUPTED", retryable=True, count_attempt=False)) == "queued"
    new = harness.db_call(queue.claim, "host:1")
    assert (new.job_id, new.worker, new.attempt) == (old.job_id, old.worker, old.attempt) == (job_id, "host:1", 1)
    assert harness.db_call(queue.start, new) is not None
    assert harness.db_call(queue.heartbeat, old, 0.3) is False
    assert progress() == 0.0
    assert harness.db_call(queue.record_version, old, ids.new_id(), ids.new_id(), "f" * 64, ids.new_id()) is None
    assert harness.db_call(lambda: queue.fail(old, "TRAINING_ERROR", retryable=True)) == "lost"
    assert harness.db_call(queue.heartbeat, new, 0.4) is True
    assert progress() == 0.4
    # The lease lapses and the same worker claims the job again: the earlier claim is fenced out too.
    harness.clock.advance(seconds=61)
    newer = harness.db_call(queue.claim, "host:1")
    assert (newer.worker, newer.attempt) == ("host:1", 2)
    assert harness.db_call(queue.heartbeat, new, 0.5) is False
    assert progress() == 0.4
    assert harness.db_call(queue.record_version, new, ids.new_id(), ids.new_id(), "f" * 64, ids.new_id()) is None
    assert harness.db_call(queue.heartbeat, newer, 0.6) is True
    assert progress() == 0.6
    assert harness.db_call(queue.record_version, newer, ids.new_id(), ids.new_id(), "f" * 64, ids.new_id()) == 1
    job = harness.db_call(lambda: m.TrainingJob.get_by_id(job_id))
    assert (job.state, job.attempts, job.lease_owner) == ("succeeded", 2, None)


def test_retries_back_off_then_fail_with_a_reason(harness):
    user = harness.sign_up("retry@example.com")
    model_id, job_id = make_job(harness, user)
    queue = TrainingQueue(harness.db, harness.clock, lease_seconds=60)
    c1 = harness.db_call(queue.claim, "w")
    assert harness.db_call(lambda: queue.fail(c1, "TRAINING_ERROR", retryable=True)) == "queued"
    assert harness.db_call(queue.claim, "w") is None  # backing off
    harness.clock.advance(seconds=31)
    c2 = harness.db_call(queue.claim, "w")
    assert c2.attempt == 2
    harness.clock.advance(seconds=61)  # this worker dies; its lease lapses
    c3 = harness.db_call(queue.claim, "w2")
    assert c3.attempt == 3
    harness.clock.advance(seconds=61)  # the last attempt's worker dies too
    assert harness.db_call(queue.claim, "w3") is None
    job = harness.db_call(lambda: m.TrainingJob.get_by_id(job_id))
    assert (job.state, job.error, job.attempts) == ("failed", "ATTEMPTS_EXHAUSTED", 3)
    model = harness.models.GetModel(mp.GetModelRequest(id=model_id), metadata=user.md).model
    assert (model.state, model.failure_reason) == (mp.MODEL_STATE_FAILED, "ATTEMPTS_EXHAUSTED")


def test_concurrent_claimers_never_share_a_job(harness):
    import concurrent.futures

    user = harness.sign_up("claims@example.com")
    job_ids = set()
    for _ in range(3):
        job_ids.add(make_job(harness, user)[1])
    queue = TrainingQueue(harness.db, harness.clock, lease_seconds=600)

    def claim(i):
        harness.db.connect(reuse_if_open=True)
        try:
            return queue.claim(f"w{i}")
        finally:
            harness.db.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        claims = [c for c in pool.map(claim, range(24)) if c is not None]
    assert sorted(c.job_id for c in claims) == sorted(job_ids)


# --- WatchModel ---------------------------------------------------------------------------------


def test_watch_model_streams_progress_until_ready(harness):
    user = harness.sign_up("watch@example.com")
    model_id, job_id = make_job(harness, user)
    queue = TrainingQueue(harness.db, harness.clock, lease_seconds=60)
    stream = harness.models.WatchModel(mp.WatchModelRequest(id=model_id), metadata=user.md, timeout=30)
    first = next(stream)
    assert first.state == mp.MODEL_STATE_QUEUED
    claim = harness.db_call(queue.claim, "w")
    harness.db_call(queue.start, claim)
    seen = [first.state]
    for event in stream:
        seen.append(event.state)
        if event.state == mp.MODEL_STATE_TRAINING and event.progress == 0:
            harness.db_call(queue.heartbeat, claim, 0.5)
        elif event.state == mp.MODEL_STATE_TRAINING and event.progress == 0.5:
            harness.db_call(queue.record_version, claim, ids.new_id(), ids.new_id(), "0" * 64, ids.new_id())
    assert seen == [mp.MODEL_STATE_QUEUED, mp.MODEL_STATE_TRAINING, mp.MODEL_STATE_TRAINING, mp.MODEL_STATE_READY]
    assert event.model.version == 1 and event.progress == 1.0


def test_many_watchers_cost_one_query_per_tick(sqlite_harness):
    """1000 concurrent WatchModel streams: the server keeps one poll per tick, and every watcher sees the change."""
    h = sqlite_harness
    user = h.sign_up("crowd@example.com")
    model_id, _ = make_job(h, user)
    from faceharmony.v1 import model_pb2_grpc

    async def crowd():
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{h.port}") for _ in range(4)]
        stubs = [model_pb2_grpc.ModelServiceStub(c) for c in channels]
        calls = [
            stubs[i % 4].WatchModel(mp.WatchModelRequest(id=model_id), metadata=user.md, timeout=60)
            for i in range(1000)
        ]
        firsts = await asyncio.gather(*(c.read() for c in calls))
        assert all(f.state == mp.MODEL_STATE_QUEUED for f in firsts)
        hub = h.api.watch_hub
        polls_before = hub.polls
        await asyncio.sleep(2)
        assert hub.watcher_count == 1000
        assert hub.polls - polls_before <= 2 / h.settings.watch_poll_seconds + 1  # one query per tick, not per watcher
        h.db_call(
            lambda: m.UserModel.update(state="failed", failure_reason="X").where(m.UserModel.id == model_id).execute()
        )
        lasts = await asyncio.gather(*(c.read() for c in calls))
        assert all(e.state == mp.MODEL_STATE_FAILED for e in lasts)
        ends = await asyncio.gather(*(c.read() for c in calls))
        assert all(e is grpc.aio.EOF for e in ends)
        for c in channels:
            await c.close()

    asyncio.run(crowd())
    deadline = time.monotonic() + 15
    while h.api.watch_hub.watcher_count and time.monotonic() < deadline:  # the server unwinds closed streams
        time.sleep(0.05)
    assert h.api.watch_hub.watcher_count == 0
