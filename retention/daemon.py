"""The retention daemon's work: `Retention` runs every deletion policy on time, in bounded batches, and reports.

    faceharmony-retention                  loop, a cycle every FACEHARMONY_RETENTION_INTERVAL_SECONDS
    faceharmony-retention --once           one cycle (a cron job); exit 0 when every policy ran
    faceharmony-retention --dry-run        print what a cycle would purge, by kind; touch nothing
    faceharmony-retention --now 2026-03-01T00:00:00Z --once   evaluate the policies' deadlines as of that moment
    --metrics-port 9464 [--metrics-host ADDR] / --metrics-file PATH   Prometheus metrics (HTTP or textfile)

A cycle purges, in this order: accounts past their grace period (everything of
the person but the email's HMAC), models pending deletion past theirs (with
their adapters and photos), photos marked deleted or never attached and
expired (and, with FACEHARMONY_PURGE_PHOTOS_AFTER_TRAINING, photos of trained
models), generated photos past purge_after, expired codes, sessions,
invitations and old rate-limit rows; then, every
FACEHARMONY_ORPHAN_SWEEP_INTERVAL_SECONDS (and in every `--once` run), it
sweeps orphan blobs and the temporary files of writes that never finished
(core/tempfiles.py), once older than the orphan margin. Each policy repeats
batches until nothing is due; a failing policy is logged, counted and retried
next cycle without stopping the others, and so is a failing account or model,
or a photo whose blob could not be deleted, without stopping the rest of its
policy.

On GCS the daemon reads the bucket's soft delete and object versioning at
start-up: with soft delete it reports until when purged blobs stay
recoverable; with versioning (a noncurrent copy of every deleted blob) it
refuses to call any purge final: purges_not_final_total, an error log, and
`--once` exits 1.

`--now` moves only the deadlines. The orphan sweep (which compares with the
blobs' real creation times), audit event times and the soft-delete horizon
use the real clock, so `--now` in the future never sweeps uploads in flight.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

import peewee as pw

from faceharmony.core.blobstore.base import BlobStore, Role
from faceharmony.core.clock import Clock, SystemClock
from faceharmony.core.db import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.jobs import evictions
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.keys.keyring import keyring as installed_keyring
from faceharmony.core.settings import Settings
from faceharmony.retention import keys, policies
from faceharmony.retention.metrics import Metrics
from faceharmony.retention.orphans import sweep_orphan_blobs, sweep_temporary_files, temporary_folders

log = logging.getLogger("faceharmony.retention")

# The sweep's count of temporary files left by writers killed mid-write (no blob: never "not final").
TEMPORARY_FILES = "temporary_files"
# Data keys shredded by the purges of a cycle, and by the key sweep (retention/keys.py): no blob either.
DATA_KEYS = "data_keys"
ORPHAN_KEYS = "orphan_data_keys"

# Safety stop for one policy in one cycle (a batch that makes no progress ends it anyway).
MAX_BATCHES_PER_CYCLE = 10_000


class Retention:
    """One daemon's state: database, blob store (retention role), settings, clock and metrics."""

    def __init__(
        self,
        settings: Settings,
        db: pw.Database,
        store: BlobStore,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        soft_delete_seconds: int = 0,
        keeps_deleted_versions: bool = False,
        keyring: Keyring | None = None,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self.db = db
        self.store = store
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.soft_delete_seconds = soft_delete_seconds
        self.metrics.set("soft_delete_seconds", soft_delete_seconds)
        # A versioned bucket keeps a noncurrent copy of every deleted blob: no purge is final (see _report).
        self.keeps_deleted_versions = keeps_deleted_versions
        self.metrics.set("bucket_versioning_enabled", int(keeps_deleted_versions))
        self._last_sweep: dt.datetime | None = None  # when this daemon last swept orphan blobs (its clock)

    def context(self, now: dt.datetime | None = None) -> policies.Context:
        """A cycle's context: deadlines as of `now` (default: the clock's time); the real clock for everything else."""
        return policies.Context(self.db, self.store, self.settings, now or self.clock.now(), self.clock, self.keyring)

    def keys(self) -> Keyring:
        return self.keyring if self.keyring is not None else installed_keyring.obj

    def _policies(self) -> list[tuple[str, Callable[[policies.Context], int]]]:
        steps: list[tuple[str, Callable[[policies.Context], int]]] = [
            ("accounts", lambda ctx: _claimed(ctx, "accounts", policies.claim_accounts, policies.purge_account)),
            ("models", lambda ctx: _claimed(ctx, "models", policies.claim_models, policies.purge_model)),
            ("photos_marked_after_training", policies.mark_trained_photos),
            ("photos_marked_expired", policies.mark_expired_photos),
            ("photos", policies.purge_deleted_photos),
            ("generated_photos", policies.purge_generated_photos),
        ]
        for kind in policies.HOUSEKEEPING:
            steps.append((kind, lambda ctx, kind=kind: policies.purge_expired(ctx, kind)))
        return steps

    def run_once(self, now: dt.datetime | None = None, sweep: bool | None = None) -> dict[str, int]:
        """One cycle, deadlines as of `now` (default: the clock). Returns purged counts by kind; errors are logged
        and counted. The orphan sweep runs when `sweep` is true, or (None) when its interval has passed since the
        last sweep of this daemon (its first cycle always sweeps)."""
        started = time.monotonic()
        ctx = self.context(now)
        purged: dict[str, int] = {}
        errors: list[str] = []
        for kind, step in self._policies():
            try:
                purged[kind] = _repeat(ctx, step)
            except Exception:  # one failing policy must not stop the others; retried next cycle
                log.exception("retention policy failed", extra={"policy": kind})
                self.metrics.inc("errors_total", kind)
                errors.append(kind)
            failed = len(ctx.failed.get(kind, ()))
            if failed:  # items that failed on their own (logged where they failed); retried next cycle
                self.metrics.inc("errors_total", kind, failed)
                errors.append(kind)
        purged[DATA_KEYS] = ctx.shredded[0]
        self._rotate(ctx, errors)
        if self._sweep_due() if sweep is None else sweep:
            purged.update(self._sweep(errors))
        purged = {k: v for k, v in purged.items() if not k.startswith("photos_marked_")}
        self._report(ctx, purged, errors, time.monotonic() - started)
        return purged

    def _sweep_due(self) -> bool:
        if self._last_sweep is None:
            return True
        return self.clock.now() - self._last_sweep >= dt.timedelta(seconds=self.settings.orphan_sweep_interval_seconds)

    def _sweep(self, errors: list[str]) -> dict[str, int]:
        """The orphan sweep, against the real clock: blobs' creation times are real, whatever `--now` says."""
        now = self.clock.now()
        try:
            margin = dt.timedelta(hours=self.settings.orphan_margin_hours)
            swept = sweep_orphan_blobs(self.db, self.store, now, margin, self.settings.retention_batch_size)
        except Exception:
            log.exception("orphan sweep failed")
            self.metrics.inc("errors_total", "orphan_blobs")
            errors.append("orphan_blobs")
            return {}
        self._last_sweep = now
        result = {f"orphan_{kind}_blobs": n for kind, n in swept.items()}
        try:  # keys whose rows are gone (a purge killed before its shred, a write that never committed)
            result[ORPHAN_KEYS] = keys.sweep_orphan_keys(self.keys(), now, margin, self.settings.retention_batch_size)
        except Exception:
            log.exception("key sweep failed")
            self.metrics.inc("errors_total", ORPHAN_KEYS)
            errors.append(ORPHAN_KEYS)
        try:  # what writers killed mid-write left (core/tempfiles.py), past the same margin
            result[TEMPORARY_FILES] = sweep_temporary_files(self.store, temporary_folders(self.settings), now, margin)
        except Exception:
            log.exception("temporary file sweep failed")
            self.metrics.inc("errors_total", TEMPORARY_FILES)
            errors.append(TEMPORARY_FILES)
        return result

    def _rotate(self, ctx: policies.Context, errors: list[str]) -> None:
        """One KEK rotation pass (retention/keys.py), against the real clock."""
        try:
            report = keys.rotate(self.keys(), self.settings, self.clock.now())
        except Exception:
            log.exception("KEK rotation failed: retried next cycle")
            self.metrics.inc("errors_total", "kek_rotation")
            errors.append("kek_rotation")
            return
        if report.rotated_to:
            self.metrics.inc("kek_rotations_total")
        if report.rewrapped:
            self.metrics.inc("data_keys_rewrapped_total", None, report.rewrapped)
        if report.destroyed:
            self.metrics.inc("kek_versions_destroyed_total", None, len(report.destroyed))

    def _report(self, ctx: policies.Context, purged: dict[str, int], errors: list[str], seconds: float) -> None:
        for kind, n in purged.items():
            self.metrics.inc("purged_total", kind, n)
        for kind, n in policies.due_counts(ctx).items():
            self.metrics.set("overdue_items", n, kind)
        self.metrics.set("run_duration_seconds", seconds)
        self.metrics.set("last_run_timestamp_seconds", time.time())
        total = sum(purged.values())
        if purged.get("accounts") or purged.get("models"):  # not for the routine expiries of every cycle
            with write_transaction(self.db):
                audit.record(self.clock, audit.RETENTION_RUN, **{k: v for k, v in purged.items() if v})
        self._report_evictions()
        if self.keeps_deleted_versions:
            self._not_final(purged)
        if total:
            if self.soft_delete_seconds:
                until = self.clock.now() + dt.timedelta(seconds=self.soft_delete_seconds)
                self.metrics.set("blobs_recoverable_until_timestamp_seconds", until.timestamp())
                log.warning(
                    "purged blobs stay recoverable in the bucket (soft delete) until %s",
                    until.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    extra={"soft_delete_seconds": self.soft_delete_seconds},
                )
        log.info(
            "retention cycle",
            extra={
                "purged": total,
                "errors": len(errors),
                "duration_ms": round(seconds * 1000),
                **{f"purged_{k}": v for k, v in purged.items() if v},
            },
        )

    def _report_evictions(self) -> None:
        """Evictions from Triton's adapter cache not yet confirmed by every replica (core/jobs/evictions.py): gauges,
        and an error log with the model keys of those pending longer than evictions.OVERDUE_AFTER."""
        try:
            state = evictions.overdue(self.clock.now())
        except pw.DatabaseError:
            log.exception("eviction records could not be read")
            return
        self.metrics.set("evictions_pending", state.pending)
        self.metrics.set("evictions_overdue", state.overdue)
        self.metrics.set("eviction_oldest_age_seconds", state.oldest_seconds)
        if state.overdue:
            log.error(
                "model evictions not confirmed by every Triton replica: a replica that was unreachable may still "
                "hold these adapters in its cache (remove a replica retired for good from the configuration)",
                extra={"evictions_overdue": state.overdue, "keys": ",".join(state.keys)},
            )

    def _not_final(self, purged: dict[str, int]) -> None:
        """On a versioned bucket the blobs of what was purged stay as noncurrent versions: counted by kind and
        logged as an error; `--once` then exits 1. Housekeeping kinds hold no blobs."""
        kinds = {
            k: n
            for k, n in purged.items()
            if n and k not in policies.HOUSEKEEPING and k not in (TEMPORARY_FILES, DATA_KEYS, ORPHAN_KEYS)
        }
        for kind, n in kinds.items():
            self.metrics.inc("purges_not_final_total", kind, n)
        if kinds:
            log.error(
                "purges not final: the bucket keeps a noncurrent version of every deleted blob (object versioning is on)",
                extra={f"not_final_{k}": n for k, n in kinds.items()},
            )

    def dry_run(self, now: dt.datetime | None = None) -> dict[str, dict[str, int]]:
        """What a cycle at `now` would purge: due items by kind, the rows inside due accounts and models, and the
        orphan blobs a sweep would delete now (against the real clock, like the sweep)."""
        ctx = self.context(now)
        margin = dt.timedelta(hours=self.settings.orphan_margin_hours)
        orphans = sweep_orphan_blobs(
            self.db, self.store, self.clock.now(), margin, self.settings.retention_batch_size, dry_run=True
        )
        temporary = sweep_temporary_files(
            self.store, temporary_folders(self.settings), self.clock.now(), margin, dry_run=True
        )
        orphan_keys = keys.sweep_orphan_keys(
            self.keys(), self.clock.now(), margin, self.settings.retention_batch_size, dry_run=True
        )
        return {
            "due": policies.due_counts(ctx),
            "orphan_keys": {ORPHAN_KEYS: orphan_keys},
            "contents": policies.contents_of_due(ctx),
            "orphan_blobs": orphans,
            "temporary": {TEMPORARY_FILES: temporary},
        }


def _repeat(ctx: policies.Context, step: Callable[[policies.Context], int]) -> int:
    total = 0
    for _ in range(MAX_BATCHES_PER_CYCLE):
        n = step(ctx)
        total += n
        if n == 0:
            break
    return total


def _claimed(ctx: policies.Context, kind: str, claim: Callable, purge: Callable) -> int:
    """One batch of a mark-then-purge policy: returns how many this daemon purged (0 ends the policy). An item
    whose purge fails is logged, recorded in ctx.failed (left out of the next batches, counted by run_once)
    and retried next cycle; the others go on."""
    done = 0
    for item_id in claim(ctx):
        try:
            done += bool(purge(ctx, item_id))
        except Exception:
            log.exception("retention purge failed: retried next cycle", extra={"policy": kind, "item_id": item_id})
            ctx.fail(kind, item_id)
    return done


def open_store(settings: Settings) -> tuple[BlobStore, int, bool]:
    """The blob store for the retention role, the bucket's soft-delete period in seconds (0 off, or local), and
    whether a delete leaves a noncurrent version (GCS object versioning)."""
    from faceharmony.core.blobstore.factory import open_blob_store

    store = open_blob_store(settings, Role.RETENTION)
    return store, store.soft_delete_seconds(), store.keeps_deleted_versions()
