"""Training end to end: the trainer process turns four accepted photos into a READY model with an adapter only the order side can read; a trainer killed with SIGKILL mid-training loses nothing and the job ends with exactly one version; a model deleted during training stops its job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from faceharmony.core.blobstore.base import BlobPermissionError, Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.db import models as m
from faceharmony.core.diffusion.pipeline import build_tiny_pipeline
from faceharmony.core.keys import aead
from faceharmony.trainer.lora import load_adapter_bytes, read_adapter_metadata
from faceharmony.trainer.worker import Trainer
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import photo_pb2 as p
from tests.support import images
from tests.support.harness import start_harness, trainer_env
from tests.support.wait import wait_for

pytestmark = pytest.mark.processes

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny"
    build_tiny_pipeline(folder)
    return folder


@pytest.fixture
def system(tmp_path, base_model):
    h = start_harness(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        base_model=str(base_model),
        training_lease_seconds=3,
        trainer_poll_seconds=0.2,
        training_steps=40,
    )
    yield h
    h.stop()


def new_model(h, email: str):
    user = h.sign_up(email)
    payload = images.one_face()
    photo_ids = [
        h.photos.UploadPhoto(p.UploadPhotoRequest(content=payload), metadata=user.md).photo.id for _ in range(4)
    ]
    model = h.models.CreateModel(mp.CreateModelRequest(display_name="Me", photo_ids=photo_ids), metadata=user.md).model
    return user, model


def test_a_trainer_killed_mid_training_loses_nothing(system, tmp_path):
    h = system
    user, model = new_model(h, "crash@example.com")
    logs = [open(tmp_path / f"trainer-{i}.log", "wb") for i in range(2)]
    first = subprocess.Popen([str(BIN / "faceharmony-trainer")], env=trainer_env(h), stdout=logs[0], stderr=logs[0])
    try:
        wait_for(lambda: h.db_call(lambda: m.UserModel.get_by_id(model.id).progress) >= 0.1, what="training progress")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert (
            h.models.GetModel(mp.GetModelRequest(id=model.id), metadata=user.md).model.state == mp.MODEL_STATE_TRAINING
        )
        second = subprocess.Popen(
            [str(BIN / "faceharmony-trainer")], env=trainer_env(h), stdout=logs[1], stderr=logs[1]
        )
        try:
            states = []
            for event in h.models.WatchModel(mp.WatchModelRequest(id=model.id), metadata=user.md, timeout=240):
                states.append((event.state, event.progress))
            assert states[-1] == (mp.MODEL_STATE_READY, 1.0), (tmp_path / "trainer-1.log").read_text()[-3000:]
            progress = [pr for st, pr in states if st == mp.MODEL_STATE_TRAINING]
            restart = progress[progress.index(min(progress)) :]  # the second trainer starts the job over...
            assert restart == sorted(restart) and len(set(restart)) >= 2  # ...and its progress only rises
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    finally:
        for log in logs:
            log.close()
    versions = h.db_call(lambda: list(m.ModelVersion.select()))
    assert len(versions) == 1 and versions[0].version == 1
    job = h.db_call(lambda: m.TrainingJob.get(m.TrainingJob.model == model.id))
    assert (job.state, job.attempts) == ("succeeded", 2)
    # The adapter and its metadata are the only model blobs: the killed trainer wrote none.
    model_blobs = sorted(os.listdir(h.settings.blob_dir / "models"))
    assert model_blobs == sorted([versions[0].adapter_blob_id, versions[0].metadata_blob_id])
    # Only the order side reads models (P12).
    version = versions[0]
    # Sealed with the version's own key (shredded with the model), not the account's.
    assert version.key_id != h.db_call(lambda: m.Account.get_by_id(user.account_id).key_id)
    for blob_id in (version.adapter_blob_id, version.metadata_blob_id):
        assert aead.is_sealed((h.settings.blob_dir / "models" / blob_id).read_bytes())
    with pytest.raises(BlobPermissionError):
        LocalBlobStore(h.settings.blob_dir, Role.API).read("models", version.adapter_blob_id, key_id=version.key_id)
    with pytest.raises(BlobPermissionError):
        LocalBlobStore(h.settings.blob_dir, Role.TRAINER).read("models", version.adapter_blob_id, key_id=version.key_id)
    adapter = LocalBlobStore(h.settings.blob_dir, Role.ORDER).read(
        "models", version.adapter_blob_id, key_id=version.key_id
    )
    metadata_blob = LocalBlobStore(h.settings.blob_dir, Role.ORDER).read(
        "models", version.metadata_blob_id, key_id=version.key_id
    )
    assert json.loads(metadata_blob)["model_id"] == model.id
    assert load_adapter_bytes(adapter)
    metadata = read_adapter_metadata(adapter)
    assert metadata["trigger_token"] == "sks" and int(metadata["rank"]) == 4
    got = h.models.GetModel(mp.GetModelRequest(id=model.id), metadata=user.md).model
    assert (got.state, got.version) == (mp.MODEL_STATE_READY, 1)


def test_deleting_a_model_during_training_stops_its_job(system):
    h = system
    user, model = new_model(h, "stop@example.com")
    trainer = Trainer(h.settings, worker_id="in-process", db=h.db)
    worker = threading.Thread(target=trainer.run_once)
    worker.start()
    wait_for(lambda: h.db_call(lambda: m.UserModel.get_by_id(model.id).progress) > 0, what="training progress")
    h.models.DeleteModel(mp.DeleteModelRequest(id=model.id), metadata=user.md)
    worker.join(60)
    assert not worker.is_alive()
    assert h.db_call(m.ModelVersion.select().count) == 0
    assert h.db_call(lambda: m.TrainingJob.get(m.TrainingJob.model == model.id).state) == "cancelled"
    models_dir = h.settings.blob_dir / "models"
    assert not models_dir.exists() or os.listdir(models_dir) == []


def test_missing_base_model_fails_with_a_reason_after_retries(tmp_path):
    h = start_harness(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        base_model=str(tmp_path / "no-such-model"),
        training_max_attempts=2,
    )
    try:
        user, model = new_model(h, "nobase@example.com")
        trainer = Trainer(h.settings, clock=h.clock, worker_id="w", db=h.db)
        assert trainer.run_once() is True
        job = h.db_call(lambda: m.TrainingJob.get(m.TrainingJob.model == model.id))
        assert (job.state, job.error) == ("queued", "BASE_MODEL_MISSING")
        h.clock.advance(minutes=5)
        assert trainer.run_once() is True
        got = h.models.GetModel(mp.GetModelRequest(id=model.id), metadata=user.md).model
        assert (got.state, got.failure_reason) == (mp.MODEL_STATE_FAILED, "BASE_MODEL_MISSING")
        assert trainer.run_once() is False
    finally:
        h.stop()


def test_sigterm_hands_the_job_back_without_using_an_attempt(system, tmp_path):
    h = system
    user, model = new_model(h, "sigterm@example.com")
    with open(tmp_path / "t.log", "wb") as log:
        proc = subprocess.Popen([str(BIN / "faceharmony-trainer")], env=trainer_env(h), stdout=log, stderr=log)
        wait_for(lambda: h.db_call(lambda: m.UserModel.get_by_id(model.id).progress) > 0, what="training progress")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    job = h.db_call(lambda: m.TrainingJob.get(m.TrainingJob.model == model.id))
    assert (job.state, job.attempts, job.error) == ("queued", 0, "INTERRUPTED")
    # the model waits, visibly, for the next trainer
    assert h.models.GetModel(mp.GetModelRequest(id=model.id), metadata=user.md).model.state == mp.MODEL_STATE_QUEUED


def test_unreadable_photos_fail_for_good_while_other_errors_retry(system, monkeypatch):
    h = system
    user, model = new_model(h, "unreadable@example.com")
    trainer = Trainer(h.settings, clock=h.clock, worker_id="w", db=h.db)

    def job():
        return h.db_call(lambda: m.TrainingJob.get(m.TrainingJob.model == model.id))

    from faceharmony.trainer import lora

    def buggy(*args, **kwargs):
        raise ValueError("a bug, not a photo")

    with monkeypatch.context() as patch:
        patch.setattr(lora, "train_lora", buggy)
        assert trainer.run_once() is True
    assert (job().state, job().error) == ("queued", "TRAINING_ERROR")  # any other error is retried
    h.clock.advance(minutes=5)

    class Garbled:  # every photo reads as bytes no decoder takes
        def read(self, kind, blob_id, *, key_id):
            return b"not a jpeg"

    trainer.store = Garbled()
    assert trainer.run_once() is True
    assert (job().state, job().error, job().attempts) == ("failed", "PHOTO_UNREADABLE", 2)
    got = h.models.GetModel(mp.GetModelRequest(id=model.id), metadata=user.md).model
    assert (got.state, got.failure_reason) == (mp.MODEL_STATE_FAILED, "PHOTO_UNREADABLE")


def test_a_photo_that_does_not_open_is_retried_and_trains_once_resealed(system):
    """A photo blob left in the clear by an older version (the reseal step not run yet) is never used as is:
    the job is given back (PHOTO_UNREADABLE, retried); once the reseal step sealed it, the model trains."""
    from faceharmony.core.blobstore.reseal import reseal_legacy_blobs

    h = system
    user, model = new_model(h, "legacy-photo@example.com")
    row = h.db_call(lambda: m.Photo.select().where(m.Photo.model_id == model.id).first())
    plain = LocalBlobStore(h.settings.blob_dir, Role.TRAINER).read("photos", row.blob_id, key_id=row.key_id)
    (h.settings.blob_dir / "photos" / row.blob_id).write_bytes(plain)  # as an older version stored it
    h.db_call(lambda: m.MaintenanceStep.delete().execute())  # ... which had not run the reseal step
    trainer = Trainer(h.settings, clock=h.clock, worker_id="w", db=h.db)
    assert trainer.run_once() is True
    job = h.db_call(lambda: m.TrainingJob.get(m.TrainingJob.model == model.id))
    assert (job.state, job.error) == ("queued", "PHOTO_UNREADABLE")
    assert h.db_call(reseal_legacy_blobs, h.db, h.settings)["photos"] == 1
    h.clock.advance(minutes=5)
    assert trainer.run_once() is True
    got = h.models.GetModel(mp.GetModelRequest(id=model.id), metadata=user.md).model
    assert got.state == mp.MODEL_STATE_READY
