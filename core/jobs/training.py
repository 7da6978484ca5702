"""Training jobs of personal models, shared by the API server (which queues them) and the trainers (which run them).

A model's state follows its newest job: QUEUED when a job is queued,
TRAINING while a trainer holds it (with progress), READY when a version is
recorded, FAILED (with a reason) when the job fails for good. Recording a
version is fenced by the job's lease and the model's state, in one
transaction with the job's success, so a job yields at most one version even
when a stalled trainer wakes up after another one took its job over.

Lock order (`faceharmony.core.db.locks`): a model's row before its jobs' rows.
`DeleteModel` locks the model and then cancels its jobs; the trainer's fenced
writes (start, record, fail) lock the model first too (`lock_first`).
"""

from __future__ import annotations

import datetime as dt

import peewee as pw

from faceharmony.core import ids
from faceharmony.core.clock import Clock
from faceharmony.core.db.connection import is_sqlite, write_transaction
from faceharmony.core.db.models import JobState, ModelState, ModelVersion, TrainingJob, UserModel
from faceharmony.core.jobs.queue import Claim, JobQueue

LIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
# A model in these states may be trained: its newest job is queued, or a trainer holds it.
TRAINABLE_MODEL_STATES = (ModelState.QUEUED, ModelState.TRAINING)


def enqueue(model_id: str, kind: str, now: dt.datetime, max_attempts: int) -> TrainingJob:
    """Queues a job; call inside the caller's write transaction."""
    return TrainingJob.create(
        id=ids.new_id(),
        model=model_id,
        kind=kind,
        state=JobState.QUEUED,
        max_attempts=max_attempts,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


def cancel_jobs(model_id: str, now: dt.datetime) -> int:
    """Cancels a model's live jobs (its trainer's next heartbeat fails and it stops); inside a transaction."""
    return (
        TrainingJob.update(
            state=JobState.CANCELLED, finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None
        )
        .where(TrainingJob.model == model_id, TrainingJob.state.in_(LIVE_JOB_STATES))
        .execute()
    )


class TrainingQueue(JobQueue):
    def __init__(self, db: pw.Database, clock: Clock, lease_seconds: float) -> None:
        super().__init__(TrainingJob, db, clock, lease_seconds)

    @staticmethod
    def _model_of(job_id: str):
        """The job's model, as a condition on UserModel: one statement, no read of the job first."""
        return UserModel.id.in_(TrainingJob.select(TrainingJob.model).where(TrainingJob.id == job_id))

    def lock_first(self, job_id: str) -> None:
        """The job's model before the job (DeleteModel locks the model, then cancels its jobs)."""
        if not is_sqlite(self.db):
            UserModel.select(UserModel.id).where(self._model_of(job_id)).for_update().first()

    def on_failed(self, job_id: str, error: str) -> None:
        UserModel.update(
            state=ModelState.FAILED, failure_reason=error, progress=0.0, updated_at=self.clock.now()
        ).where(self._model_of(job_id), UserModel.state.in_(TRAINABLE_MODEL_STATES)).execute()

    def on_requeued(self, job_id: str) -> None:
        UserModel.update(state=ModelState.QUEUED, progress=0.0, updated_at=self.clock.now()).where(
            self._model_of(job_id), UserModel.state == ModelState.TRAINING
        ).execute()

    def on_heartbeat(self, claim: Claim, progress: float | None) -> None:
        """The model shows the job's progress; in the heartbeat's transaction, after the job's row was renewed."""
        if progress is None:
            return
        target = UserModel.select(UserModel.id).where(
            self._model_of(claim.job_id), UserModel.state == ModelState.TRAINING
        )
        if not is_sqlite(self.db):
            # Here the job's row is locked before the model's; deleting a model locks them the other way round.
            # A model row another writer holds is skipped (its progress waits for the next beat): no deadlock.
            target = target.for_update(skip_locked=True)
        UserModel.update(progress=progress, updated_at=self.clock.now()).where(UserModel.id.in_(target)).execute()

    def start(self, claim: Claim) -> UserModel | None:
        """Marks the claimed job's model TRAINING; None when the model may not be trained (deleted meanwhile)."""
        with write_transaction(self.db):
            self.lock_first(claim.job_id)
            if not self.owns(claim):
                return None
            job = TrainingJob.get_by_id(claim.job_id)
            model = UserModel.get_by_id(job.model_id)
            if model.state not in TRAINABLE_MODEL_STATES:
                self._finish(job.id, JobState.CANCELLED, self.clock.now(), error="MODEL_NOT_TRAINABLE")
                return None
            UserModel.update(
                state=ModelState.TRAINING, progress=0.0, failure_reason=None, updated_at=self.clock.now()
            ).where(UserModel.id == model.id).execute()
            return UserModel.get_by_id(model.id)

    def record_version(
        self, claim: Claim, adapter_blob_id: str, metadata_blob_id: str, fingerprint: str, key_id: str
    ) -> int | None:
        """Records the new adapter and makes the model READY; None when the job is no longer ours to finish.
        `key_id`: the version's own data key, which sealed both blobs (shredded when the model is purged)."""
        with write_transaction(self.db):
            self.lock_first(claim.job_id)
            if not self.owns(claim):
                return None
            job = TrainingJob.get_by_id(claim.job_id)
            model = UserModel.get_by_id(job.model_id)
            if model.state != ModelState.TRAINING:
                self._finish(job.id, JobState.CANCELLED, self.clock.now(), error="MODEL_NOT_TRAINABLE")
                return None
            latest = (
                ModelVersion.select(pw.fn.MAX(ModelVersion.version)).where(ModelVersion.model == model.id).scalar() or 0
            )
            now = self.clock.now()
            ModelVersion.create(
                id=ids.new_id(),
                model=model.id,
                version=latest + 1,
                job=job.id,
                adapter_blob_id=adapter_blob_id,
                metadata_blob_id=metadata_blob_id,
                base_fingerprint=fingerprint,
                created_at=now,
                key_id=key_id,
            )
            UserModel.update(state=ModelState.READY, progress=1.0, current_version=latest + 1, updated_at=now).where(
                UserModel.id == model.id
            ).execute()
            self.succeed(claim)
            return latest + 1
