"""Evictions from Triton's adapter cache: which model versions every Triton replica must forget, and when that is done.

A model version stops being servable when its model is deleted (P13), its account deactivated (P17) or
the account or model purged (P5, P13). In the transaction of that decision, `request` writes one
ModelEviction record per version. Order workers (order_worker/worker.py) ask each configured Triton replica
(`replicas`, the one place that says what "every replica" is) to drop the keys that replica has not
confirmed yet, and `confirm` records each replica's answer; a record is deleted only once every configured
replica confirmed it. A replica that is unreachable or fails, a worker killed mid-sweep or restarted, only
delay the record: the next sweep of any worker asks again (`failed` counts the attempts). A worker whose
image request was in flight at Triton when its model became unservable requests the eviction again, since
Triton may have fetched the adapter after the sweep.

Reactivating an account or restoring a model makes its models servable again: `cancel` drops their pending
records, and Triton fetches an adapter again on the next request that needs it.

A record outlives its model's purge (it has no foreign key and names the model by its random id and version
only, never the account): the purge deletes the adapter blob and the rows on time, never held back by
Triton, so the replicas' caches are the only copies left, and the record keeps asking the replicas that
have not confirmed. The retention daemon reports records still pending after OVERDUE_AFTER (`overdue`): a
metric and an error log with their keys. An operator who retires a replica for good removes it from the
configuration; its records then complete on the replicas that remain.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import peewee as pw

from faceharmony.core import ids
from faceharmony.core.db.connection import is_sqlite, write_transaction
from faceharmony.core.db.models import ModelEviction, ModelVersion
from faceharmony.core.settings import Settings

# A record still pending after this long is reported by the retention daemon (metric and error log with keys).
OVERDUE_AFTER = dt.timedelta(hours=1)
# How many records one sweep takes (oldest first); the rest wait for the next sweep.
SWEEP_BATCH = 500


def replicas(settings: Settings) -> tuple[str, ...]:
    """Every Triton replica whose adapter cache must forget an unservable model: the addresses (gRPC) that
    must each confirm an eviction before it is done, and the ones order workers route images to
    (order_worker/routing.py): FACEHARMONY_TRITON_REPLICAS, or FACEHARMONY_TRITON_URL alone when that is empty."""
    listed = tuple(r.strip() for r in settings.triton_replicas.split(",") if r.strip())
    return listed or (settings.triton_url,)


def model_key(model_id: str, version: int) -> str:
    """The adapter-cache key Triton uses for a model version."""
    return f"{model_id}:{version}"


def request(model_ids: pw.ModelSelect | Sequence[str], now: dt.datetime) -> int:
    """Inside the transaction of the decision: every version of these models must leave every replica's cache.
    A pending record is requested again (a new token, no confirmation yet). Returns how many versions."""
    # peewee's stubs type .tuples() as the select itself; it yields (model id, version) tuples.
    rows = (
        ModelVersion.select(ModelVersion.model, ModelVersion.version).where(ModelVersion.model.in_(model_ids)).tuples()
    )
    versions = sorted(cast("Iterable[tuple[str, int]]", rows))
    return request_versions(versions, now)


def request_versions(versions: Iterable[tuple[str, int]], now: dt.datetime) -> int:
    rows = [
        {
            "id": ids.new_id(),
            "model_id": m,
            "version": v,
            "token": ids.new_id(),
            "requested_at": now,
            "confirmed_by": [],
            "attempts": 0,
        }
        for m, v in sorted(set(versions))
    ]
    if not rows:
        return 0
    ModelEviction.insert_many(rows).on_conflict(
        conflict_target=[ModelEviction.model_id, ModelEviction.version],
        update={
            ModelEviction.token: pw.EXCLUDED.token,
            ModelEviction.requested_at: pw.EXCLUDED.requested_at,
            ModelEviction.confirmed_by: pw.EXCLUDED.confirmed_by,
            ModelEviction.attempts: 0,
            ModelEviction.last_error: None,
        },
    ).execute()
    return len(rows)


def cancel(db: pw.Database, model_ids: pw.ModelSelect | Sequence[str]) -> int:
    """Inside the transaction that makes these models servable again: their pending evictions are dropped.

    The rows are locked first in (model_id, version) order, the order every writer of these rows uses, so a
    cancel never deadlocks with an order worker's confirm or a new request (a DELETE alone locks in scan order)."""
    query = (
        ModelEviction.select(ModelEviction.id)
        .where(ModelEviction.model_id.in_(model_ids))
        .order_by(ModelEviction.model_id, ModelEviction.version)
    )
    locked_ids = [r.id for r in (query if is_sqlite(db) else query.for_update())]
    if not locked_ids:
        return 0
    return ModelEviction.delete().where(ModelEviction.id.in_(locked_ids)).execute()


@dataclass(frozen=True)
class Pending:
    id: str
    token: str
    key: str
    confirmed_by: frozenset[str]


def pending(limit: int = SWEEP_BATCH) -> list[Pending]:
    rows = ModelEviction.select().order_by(ModelEviction.requested_at, ModelEviction.id).limit(limit)
    return [Pending(r.id, r.token, model_key(r.model_id, r.version), frozenset(r.confirmed_by or ())) for r in rows]


def _locked(db: pw.Database, records: Sequence[Pending]) -> list[ModelEviction]:
    """The records still holding the token that was read (a request made again since is left alone), locked in
    (model_id, version) order: the order request_versions' upsert and cancel lock them in (core/db/locks.py)."""
    query = (
        ModelEviction.select()
        .where(ModelEviction.id.in_([r.id for r in records]))
        .order_by(ModelEviction.model_id, ModelEviction.version)
    )
    tokens = {r.id: r.token for r in records}
    rows = list(query if is_sqlite(db) else query.for_update())
    return [row for row in rows if tokens.get(row.id) == row.token]


def confirm(db: pw.Database, records: Sequence[Pending], replica: str, every: Sequence[str]) -> int:
    """`replica` dropped these records' keys (after they were requested): recorded; a record every replica in
    `every` confirmed is deleted. Returns how many records were completed."""
    if not records:
        return 0
    done = 0
    with write_transaction(db):
        for row in _locked(db, records):
            confirmed = sorted(set(row.confirmed_by or ()) | {replica})
            if set(every) <= set(confirmed):
                done += ModelEviction.delete().where(ModelEviction.id == row.id).execute()
            else:
                ModelEviction.update(confirmed_by=confirmed).where(ModelEviction.id == row.id).execute()
    return done


def failed(db: pw.Database, records: Sequence[Pending], error: str) -> None:
    """A replica did not confirm these records: counted, with the reason, for the operator (retried next sweep)."""
    if not records:
        return
    with write_transaction(db):
        ids_ = [row.id for row in _locked(db, records)]
        ModelEviction.update(attempts=ModelEviction.attempts + 1, last_error=error[:40]).where(
            ModelEviction.id.in_(ids_)
        ).execute()


@dataclass(frozen=True)
class Overdue:
    pending: int  # every record not yet confirmed by every replica
    overdue: int  # of which requested more than OVERDUE_AFTER ago
    oldest_seconds: float  # age of the oldest pending record (0 when none)
    keys: list[str]  # model_id:version of up to 20 overdue records, oldest first


def overdue(now: dt.datetime, older_than: dt.timedelta = OVERDUE_AFTER) -> Overdue:
    """What the retention daemon reports about evictions that are still pending."""
    total = ModelEviction.select().count()
    oldest = ModelEviction.select(ModelEviction.requested_at).order_by(ModelEviction.requested_at).first()
    late = ModelEviction.select().where(ModelEviction.requested_at <= now - older_than)
    keys = [model_key(r.model_id, r.version) for r in late.order_by(ModelEviction.requested_at).limit(20)]
    age = max(0.0, (now - oldest.requested_at).total_seconds()) if oldest is not None else 0.0
    return Overdue(total, late.count(), age, keys)
