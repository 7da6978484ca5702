"""The trainer process's loop: claim a training job, read the model's photos with the image-processor role, fine-tune a LoRA, store the adapter with the trainer's role, record the version.

Every photo is read with its row's data key and the adapter and its metadata are sealed with the model's key
(the owner's: core/blobstore/base.py); the trainer opens the process's keyring at start-up (install_keyring).

Crash safety: the job is held under a lease renewed by a heartbeat thread.
A trainer killed at any point stops renewing; when the lease expires another
trainer claims the job and trains from the photos again. Only the trainer
still holding the lease can record a version (fenced in one transaction with
the job's success), so a job yields exactly one version; adapter blobs
written by a trainer that lost its job are orphans, removed by the orphan
sweep. A heartbeat that finds the job gone (the model was deleted, or the
job was taken over) stops the training at the next step. The adapter is
serialized in the data folder's scratch folder (never the system's /tmp): what
a trainer killed mid-save leaves there is removed once older than the orphan
margin, by the retention daemon's sweep and when a trainer starts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time

import peewee as pw

from faceharmony.core import metrics, tempfiles
from faceharmony.core.blobstore.base import BlobError, BlobNotFound, BlobStore, Role
from faceharmony.core.blobstore.factory import open_blob_store
from faceharmony.core.clock import Clock, SystemClock
from faceharmony.core.db.connection import open_database
from faceharmony.core.db.models import Photo
from faceharmony.core.jobs.queue import Claim, default_worker_id
from faceharmony.core.jobs.training import TrainingQueue
from faceharmony.core.keys.errors import CiphertextInvalid, KeyShredded, KeysUnavailable
from faceharmony.core.keys.factory import install_keyring
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.settings import Settings

log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        worker_id: str | None = None,
        store: BlobStore | None = None,
        db: pw.Database | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        """`db` is for running beside a server in one process (tests): the models' database is shared. `keyring`:
        default, the configured one, opened, checked and made the process's (KekMissing/KeysUnavailable if not)."""
        self.settings = settings
        self.keyring = keyring or install_keyring(settings)
        self.clock = clock or SystemClock()
        self.worker_id = worker_id or default_worker_id()
        self.db = db or open_database(settings.resolved_database_url, pool_size=4)
        self.queue = TrainingQueue(self.db, self.clock, settings.training_lease_seconds)
        self.store = store or open_blob_store(settings, Role.TRAINER, self.keyring)
        self.shutting_down = threading.Event()
        self._base = None

    # --- the base pipeline, loaded once per process --------------------------------------
    def base(self):
        if self._base is None:
            from faceharmony.core.diffusion.pipeline import load_base

            started = time.perf_counter()
            self._base = load_base(self.settings.base_model_dir)
            log.info(
                "base model loaded",
                extra={
                    "device": str(self._base.device),
                    "fingerprint": self._base.fingerprint[:12],
                    "seconds": round(time.perf_counter() - started, 2),
                },
            )
        return self._base

    def training_settings(self, seed: int):
        from faceharmony.trainer.lora import TrainingSettings

        s = self.settings
        values = {"rank": s.lora_rank, "trigger_token": s.trigger_token, "seed": seed}  # alpha: rank by default
        if s.training_steps:
            values["steps"] = s.training_steps
        if s.learning_rate:
            values["learning_rate"] = s.learning_rate
        return TrainingSettings(**values)

    # --- the loop ------------------------------------------------------------------------
    def sweep_scratch(self) -> int:
        """Removes what a trainer killed mid-save left in the data folder's scratch folder, once older than the
        orphan margin (real time; the retention daemon sweeps it too, where it shares the data folder)."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(hours=self.settings.orphan_margin_hours)
        swept = tempfiles.sweep_stale(tempfiles.scratch_dir(self.settings.data_dir), cutoff)
        if swept:
            log.info("stale temporary files removed", extra={"swept_temporary_files": swept})
        return swept

    def run_forever(self) -> None:
        log.info("trainer started", extra={"worker": self.worker_id})
        self.sweep_scratch()
        while not self.shutting_down.is_set():
            if not self.run_once():
                self.shutting_down.wait(self.settings.trainer_poll_seconds)
        log.info("trainer stopped", extra={"worker": self.worker_id})

    def run_once(self) -> bool:
        """Claims and runs one job; False when none was due."""
        self.db.connect(reuse_if_open=True)
        claim = self.queue.claim(self.worker_id)
        if claim is None:
            return False
        log.info("job claimed", extra={"job_id": claim.job_id, "attempt": claim.attempt})
        started = time.monotonic()
        outcome = "retryable_error"
        try:
            outcome = self.process(claim)
        except Exception:
            log.exception("training failed", extra={"job_id": claim.job_id})
            self.queue.fail(claim, "TRAINING_ERROR", retryable=True)
        finally:
            metrics.TRAINING_JOBS.labels(outcome).inc()
            metrics.TRAINING_SECONDS.labels(outcome).observe(time.monotonic() - started)
        return True

    def process(self, claim: Claim) -> str:
        """Runs one claimed job; returns its outcome (the training_jobs metric's label)."""
        from faceharmony.core.diffusion.pipeline import BasePipelineMissing
        from faceharmony.trainer.lora import PhotoUnreadable, TrainingCancelled, train_lora

        model = self.queue.start(claim)
        if model is None:
            log.info("job dropped: model not trainable", extra={"job_id": claim.job_id})
            return "dropped"
        try:  # before the photos: without a base, retries should not read every photo again
            base = self.base()
        except BasePipelineMissing:
            log.error("base model missing", extra={"path": str(self.settings.base_model_dir)})
            self.queue.fail(claim, "BASE_MODEL_MISSING", retryable=True)
            return "retryable_error"
        photos = list(
            Photo.select(Photo.blob_id, Photo.key_id)
            .where(Photo.model_id == model.id, Photo.deleted_at.is_null())
            .order_by(Photo.created_at, Photo.id)
            .tuples()
        )
        try:
            jpegs = [self.store.read("photos", bid, key_id=key_id) for bid, key_id in photos]
        except (BlobNotFound, KeyShredded):  # a shredded key: the owner is being purged
            self.queue.fail(claim, "PHOTO_MISSING", retryable=False)
            return "failed"
        except (BlobError, KeysUnavailable):
            self.queue.fail(claim, "STORAGE_UNAVAILABLE", retryable=True)
            return "retryable_error"
        except CiphertextInvalid:  # corrupt, or a plaintext blob not yet resealed (the reseal step): tried again
            log.error("a photo does not open with its key", extra={"job_id": claim.job_id})
            self.queue.fail(claim, "PHOTO_UNREADABLE", retryable=True)
            return "retryable_error"
        # Before the heartbeat thread starts: an error here must not leave it running.
        training_settings = self.training_settings(seed=int(claim.job_id[:8], 16))

        stop = threading.Event()
        progress = {"value": 0.0}
        beat = threading.Thread(target=self._heartbeat, args=(claim, stop, progress), name="heartbeat", daemon=True)
        beat.start()

        def on_progress(step: int, total: int) -> None:
            progress["value"] = round(step / total, 4)

        def should_stop() -> bool:
            return stop.is_set() or self.shutting_down.is_set()

        try:
            adapter = train_lora(
                base,
                jpegs,
                training_settings,
                on_progress=on_progress,
                should_stop=should_stop,
                scratch_dir=tempfiles.scratch_dir(self.settings.data_dir),
            )
        except PhotoUnreadable as exc:  # no photo, or one that cannot be decoded: retrying will not help
            log.error("training input refused", extra={"job_id": claim.job_id, "error": str(exc)})
            self.queue.fail(claim, "PHOTO_UNREADABLE", retryable=False)
            return "failed"
        except TrainingCancelled:
            if self.shutting_down.is_set() and not stop.is_set():
                self.queue.fail(claim, "INTERRUPTED", retryable=True, count_attempt=False)
                log.info("job handed back on shutdown", extra={"job_id": claim.job_id})
                return "interrupted"
            log.info("training stopped: job lost or model deleted", extra={"job_id": claim.job_id})
            return "lost"
        finally:
            stop.set()
            beat.join()
        metadata = dict(adapter.metadata, model_id=model.id, job_id=claim.job_id)
        try:
            version_key = self.keyring.new_key()  # the version's own key: the model's purge shreds it
            adapter_id = self.store.create(
                "models", adapter.safetensors, "application/octet-stream", key_id=version_key
            )
            metadata_id = self.store.create(
                "models", json.dumps(metadata, sort_keys=True).encode(), "application/json", key_id=version_key
            )
        except KeyShredded:
            self.queue.fail(claim, "MODEL_NOT_TRAINABLE", retryable=False)
            return "failed"
        except (BlobError, KeysUnavailable):
            self.queue.fail(claim, "STORAGE_UNAVAILABLE", retryable=True)
            return "retryable_error"
        version = self.queue.record_version(claim, adapter_id, metadata_id, base.fingerprint, key_id=version_key)
        if version is None:
            log.warning(
                "adapter not recorded: job lost meanwhile (its blobs are swept)", extra={"job_id": claim.job_id}
            )
            return "lost"
        log.info(
            "model ready",
            extra={
                "job_id": claim.job_id,
                "model_id": model.id,
                "version": version,
                "loss": round(adapter.final_loss, 5),
            },
        )
        return "succeeded"

    def _heartbeat(self, claim: Claim, stop: threading.Event, progress: dict) -> None:
        # Often enough that a deleted model's training stops within seconds, well inside the lease.
        interval = max(0.2, min(2.0, self.settings.training_lease_seconds / 4))
        self.db.connect(reuse_if_open=True)
        try:
            while not stop.wait(interval):
                try:
                    if not self.queue.heartbeat(claim, progress["value"]):
                        stop.set()
                except Exception:  # noqa: BLE001 - the lease may lapse; the fenced writes keep it safe
                    log.warning("heartbeat failed", extra={"job_id": claim.job_id})
        finally:
            self.db.close()
