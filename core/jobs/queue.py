"""A job queue in the database, for any number of workers on any number of machines.

A worker *claims* a due job inside a write transaction (`FOR UPDATE SKIP
LOCKED` on PostgreSQL, so concurrent claimers skip each other's rows;
`BEGIN IMMEDIATE` on SQLite, which serialises writers) and holds it under a
*lease*: `lease_owner` plus `lease_expires_at`. `lease_owner` is the worker id
followed by a token drawn for that one claim, so a worker that claims a job
it held before (worker ids are host:pid) still holds a new lease. While it
works it renews the lease with heartbeats; a worker that dies simply stops
renewing, and once the lease has expired the job is due again for anyone.
Every write a worker makes about its job is fenced by
`lease_owner = my claim's AND attempts = my attempt AND state = 'running'`,
so a worker that lost its lease (it stalled, the job was taken over or
cancelled, or handed back and claimed again) can change nothing: its
heartbeat says so and it stops.

Locks follow the one order of `faceharmony.core.db.locks`: every fenced write
first calls `lock_first(job_id)` (a hook that locks the rows coming before the
job's in that order, e.g. a training job's model), then locks the job's row.

Attempts are bounded: a claim counts one attempt; a retryable failure puts the
job back with exponential backoff; after `max_attempts` the job fails with a
clear reason. A job table is a subclass of `JobColumns`
(faceharmony.core.db.models: state, attempts, max_attempts, next_attempt_at,
lease_owner, lease_expires_at, progress, error, created_at, updated_at,
finished_at), as TrainingJob and Order are.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from dataclasses import dataclass

import peewee as pw

from faceharmony.core.clock import Clock
from faceharmony.core.db.connection import is_sqlite, write_transaction
from faceharmony.core.db.models import JobColumns, JobState

BACKOFF_BASE_SECONDS = 30
BACKOFF_MAX_SECONDS = 1800
LEASE_OWNER_MAX = 80  # the length of the lease_owner columns
_TOKEN_LEN = 12  # hex digits of the per-claim token


def default_worker_id() -> str:
    """host:pid, the lease owner name of a worker process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _lease_owner(worker: str) -> str:
    """The lease_owner value of one claim: the worker id and a token unique to the claim."""
    return f"{worker[: LEASE_OWNER_MAX - _TOKEN_LEN - 1]}/{secrets.token_hex(_TOKEN_LEN // 2)}"


@dataclass(frozen=True)
class Claim:
    job_id: str
    worker: str
    attempt: int
    owner: str  # the lease_owner this claim wrote; no other claim, even of the same worker, writes it


class JobQueue:
    def __init__(self, job_model: type[JobColumns], db: pw.Database, clock: Clock, lease_seconds: float) -> None:
        self.Job = job_model
        self.db = db
        self.clock = clock
        self.lease = dt.timedelta(seconds=lease_seconds)

    def _due(self, now: dt.datetime):
        Job = self.Job
        return ((Job.state == JobState.QUEUED) & (Job.next_attempt_at <= now)) | (
            (Job.state == JobState.RUNNING) & (Job.lease_expires_at <= now)
        )

    def claim(self, worker: str) -> Claim | None:
        """Takes the oldest due job (queued, or running under an expired lease), or None."""
        for _ in range(10):
            claim, exhausted = self._claim_one(worker)
            if not exhausted:
                return claim
        return None

    def _claim_one(self, worker: str) -> tuple[Claim | None, bool]:
        Job = self.Job
        with write_transaction(self.db):
            now = self.clock.now()
            query = Job.select().where(self._due(now)).order_by(Job.created_at, Job.id).limit(1)
            if not is_sqlite(self.db):
                query = query.for_update(skip_locked=True)
            job = query.first()
            if job is None:
                return None, False
            if job.attempts < job.max_attempts:
                owner = _lease_owner(worker)
                Job.update(
                    state=JobState.RUNNING,
                    attempts=Job.attempts + 1,
                    lease_owner=owner,
                    lease_expires_at=now + self.lease,
                    updated_at=now,
                ).where(Job.id == job.id).execute()
                return Claim(job.id, worker, job.attempts + 1, owner), False
        # The worker of its last attempt died. Failing it writes the rows `lock_first` names, which come
        # before the job's row in the lock order: a transaction of its own takes them first.
        self._fail_exhausted(job.id)
        return None, True

    def _fail_exhausted(self, job_id: str) -> None:
        Job = self.Job
        with write_transaction(self.db):
            self.lock_first(job_id)
            now = self.clock.now()
            query = Job.select(Job.id).where(Job.id == job_id, self._due(now), Job.attempts >= Job.max_attempts)
            if not is_sqlite(self.db):
                query = query.for_update()
            if query.first() is None:  # another worker got there first
                return
            self._finish(job_id, JobState.FAILED, now, error="ATTEMPTS_EXHAUSTED")
            self.on_failed(job_id, "ATTEMPTS_EXHAUSTED")

    def _fenced(self, claim: Claim):
        Job = self.Job
        return (
            (Job.id == claim.job_id)
            & (Job.lease_owner == claim.owner)
            & (Job.attempts == claim.attempt)
            & (Job.state == JobState.RUNNING)
        )

    def heartbeat(self, claim: Claim, progress: float | None = None) -> bool:
        """Renews the lease (and records progress); False when the job is no longer this worker's."""
        Job = self.Job
        with write_transaction(self.db):
            now = self.clock.now()
            values: dict[pw.Field, object] = {Job.lease_expires_at: now + self.lease, Job.updated_at: now}
            if progress is not None:
                values[Job.progress] = progress
            if Job.update(values).where(self._fenced(claim)).execute() != 1:
                return False
            self.on_heartbeat(claim, progress)
            return True

    def owns(self, claim: Claim) -> bool:
        """Inside a write transaction: whether the claim still holds its job (locks the row on PostgreSQL)."""
        query = self.Job.select(self.Job.id).where(self._fenced(claim))
        if not is_sqlite(self.db):
            query = query.for_update()
        return query.exists()

    def _finish(self, job_id: str, state: str, now: dt.datetime, error: str | None = None) -> None:
        Job = self.Job
        Job.update(
            state=state, error=error, finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None
        ).where(Job.id == job_id).execute()

    def succeed(self, claim: Claim) -> None:
        """Inside the caller's write transaction, after `owns(claim)` said yes."""
        self._finish(claim.job_id, JobState.SUCCEEDED, self.clock.now())

    def fail(self, claim: Claim, error: str, *, retryable: bool, count_attempt: bool = True) -> str:
        """Gives the job back for a later attempt with backoff, or fails it for good; returns the new state.

        `count_attempt=False` hands the job back without using up an attempt (a worker shutting down).
        Does nothing (returns "lost") when the claim no longer holds the job.
        """
        Job = self.Job
        with write_transaction(self.db):
            self.lock_first(claim.job_id)
            if not self.owns(claim):
                return "lost"
            job = Job.get_by_id(claim.job_id)
            now = self.clock.now()
            attempts = job.attempts if count_attempt else job.attempts - 1
            if retryable and attempts < job.max_attempts:
                delay = (
                    min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1)) if count_attempt else 0
                )
                Job.update(
                    state=JobState.QUEUED,
                    attempts=attempts,
                    error=error,
                    next_attempt_at=now + dt.timedelta(seconds=delay),
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                ).where(Job.id == job.id).execute()
                self.on_requeued(job.id)
                return JobState.QUEUED
            self._finish(job.id, JobState.FAILED, now, error=error)
            self.on_failed(job.id, error)
            return JobState.FAILED

    def lock_first(self, job_id: str) -> None:
        """Called first in each fenced write transaction: locks what comes before the job's row in the lock order."""

    def on_heartbeat(self, claim: Claim, progress: float | None) -> None:
        """Called (in the transaction) after a heartbeat renewed the claim's lease."""

    def on_failed(self, job_id: str, error: str) -> None:
        """Called (in the transaction) when a job fails for good."""

    def on_requeued(self, job_id: str) -> None:
        """Called (in the transaction) when a job is given back for a later attempt."""
