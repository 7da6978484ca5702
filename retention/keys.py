"""Shredding data keys (issue 12): a purge ends with the person's data key deleted, and the KEK rotates.

A purge deletes blobs, then rows (policies.py); the data keys those rows named are then shredded if no row
names them any more (an invitee's key stays while their own account uses it). Besides the person's key,
each photo, model version (adapter and metadata) and generated photo has a key of its own, so the purge of
one photo, one model or one generated photo is final too: a soft-deleted or noncurrent copy of its blob in
the bucket opens with nothing that exists. The order means no row that
the app can still see ever names a shredded key. A daemon killed between the row transaction and the shred
leaves a key no row names: the key sweep, which every daemon runs in its first cycle and then with the
orphan sweep, shreds every such key once older than the orphan margin (the margin keeps it away from keys
made for rows not yet committed: core/keys/keyring.py's new_key comes before the rows).

Every cycle also runs one KEK rotation pass (Keyring.rotate): a new primary every
FACEHARMONY_KEK_ROTATION_DAYS, every wrapped key rewrapped with it, and old versions destroyed once replaced
longer than FACEHARMONY_BACKUP_WINDOW_DAYS ago.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

import peewee as pw

from faceharmony.core.db.models import ALL_MODELS, BaseModel
from faceharmony.core.keys.factory import rotation_periods
from faceharmony.core.keys.keyring import Keyring, RotationReport
from faceharmony.core.settings import Settings

log = logging.getLogger(__name__)


def keyed_columns() -> list[pw.Field]:
    """Every key_id column of the schema (the rows that hold a person's sealed data or blobs)."""
    return [model._meta.fields["key_id"] for model in ALL_MODELS if "key_id" in model._meta.fields]


def keys_of(rows: Iterable[tuple[type[BaseModel], pw.Expression]]) -> set[str]:
    """The key ids named by the rows that match each (table, condition)."""
    found: set[str] = set()
    for table, cond in rows:
        if "key_id" in table._meta.fields:
            column = table._meta.fields["key_id"]
            found.update(k for (k,) in table.select(column).where(cond).distinct().tuples() if k)
    return found


def referenced(key_ids: Iterable[str]) -> set[str]:
    wanted = sorted(set(key_ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for column in keyed_columns():
            found.update(k for (k,) in column.model.select(column).where(column.in_(chunk)).distinct().tuples())
    return found


def shred_unreferenced(keyring: Keyring, key_ids: Iterable[str]) -> int:
    """Shreds each key no row names any more; returns how many were deleted from the key store."""
    candidates = set(key_ids)
    if not candidates:
        return 0
    return sum(1 for key_id in sorted(candidates - referenced(candidates)) if keyring.shred(key_id))


def sweep_orphan_keys(
    keyring: Keyring, now: dt.datetime, margin: dt.timedelta, batch: int = 500, dry_run: bool = False
) -> int:
    """Shreds the keys that no row names and that were made before now - margin (now: the real time)."""
    cutoff = now - margin
    count = 0
    candidates: list[str] = []

    def flush() -> int:
        unreferenced = sorted(set(candidates) - referenced(candidates))
        if dry_run:
            return len(unreferenced)
        return sum(1 for key_id in unreferenced if keyring.shred(key_id))

    for stored in keyring.store.list():
        if stored.created <= cutoff:
            candidates.append(stored.key_id)
        if len(candidates) >= batch:
            count += flush()
            candidates = []
    if candidates:
        count += flush()
    if count and not dry_run:
        log.info("orphan data keys shredded", extra={"swept_keys": count})
    return count


def rotate(keyring: Keyring, settings: Settings, now: dt.datetime) -> RotationReport:
    rotation, window = rotation_periods(settings)
    return keyring.rotate(rotation=rotation, backup_window=window, now=now)
