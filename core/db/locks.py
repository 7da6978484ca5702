"""The one lock order of every write transaction, and key locks for things that have no row to lock yet.

SQLite serialises every write transaction (`BEGIN IMMEDIATE`), so nothing
here does anything there. On PostgreSQL, two transactions that take the same
locks in opposite orders deadlock, and PostgreSQL resolves that by failing one
of them; so every transaction takes its locks in this order, and never
reaches back to an earlier kind once it holds a later one:

1. key locks (`key_lock`), in sorted order: first the email key
   (`email_key`), which serialises everything that creates or changes what
   belongs to one email (waiting-list entries, accounts, invitations to it,
   sign-in codes, failed tries); then rate-limit keys (`rate_key`), which make
   count-then-insert rate limits exact; store receipt keys (`receipt_key`) are
   taken alone, by transactions that hold no other key;
2. account rows (`FOR UPDATE`, or `FOR KEY SHARE` where a worker only needs
   the account to stay while it writes rows that reference it);
3. rows the account owns that other rows hang off: invitations, models
   (`user_model`), tickets;
4. job rows: training jobs (after their model), orders (after their account);
5. everything else (photos, slots, credit entries, audit events); among
   themselves, Triton eviction records (`model_eviction`) are always locked in
   (model_id, version) order: by the upsert that requests them, by `cancel`
   and by the order worker's confirm (core/jobs/evictions.py).

Inserting a row with a foreign key takes `FOR KEY SHARE` on the row it names,
so an insert counts as a lock of that row: that is why the trainer locks a
job's model before the job (`TrainingQueue.lock_first`), and the order worker
its order's account before the order (`OrderQueue.lock_first`), and why the
retention daemon's account purge locks the account's models before it deletes
their jobs. A lock taken
with `SKIP LOCKED` never waits, so it may be taken out of order (the
heartbeat's progress update does).
"""

from __future__ import annotations

import hashlib

import peewee as pw

from faceharmony.core.db.connection import is_sqlite


def _lock_id(key: str) -> int:
    """A signed 64-bit number for the key (PostgreSQL's advisory lock space)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


def email_key(email_hmac: str) -> str:
    return "email:" + email_hmac


def receipt_key(key_hmac: str) -> str:
    """Serialises what records, refunds or reinstates one store transaction (server/logic/purchases.py)."""
    return "receipt:" + key_hmac


def rate_key(key: str) -> str:
    return "rate:" + key


def key_lock(db: pw.Database, *keys: str) -> None:
    """Inside a write transaction: holds a lock on each key until the transaction ends (PostgreSQL advisory
    transaction locks); on SQLite the IMMEDIATE transaction already serialises every writer."""
    if is_sqlite(db):
        return
    for key in sorted(set(keys)):
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_id(key),))
