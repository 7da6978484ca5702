"""The reseal step: the plaintext blobs an install from before issue 12 left are sealed with their owners' keys.

`reseal_legacy_blobs(db, settings)` runs after the schema migrations (which gave every row its `key_id`), before
the system serves: `faceharmony-admin migrate`, and the auto-migrate path of the server and of every process
(core/process.py `Entry.require_migrated(apply=True)`). For every row that names a blob (Photo.blob_id,
ModelVersion.adapter_blob_id and .metadata_blob_id, GeneratedPhoto.blob_id and .preview_blob_id) whose stored
bytes are not sealed (`aead.is_sealed` false, read from the blob's first bytes only):

1. a sealed copy is stored under a new id (`BlobStore.reseal`, the MIGRATION role: read, create and delete on
   every kind, and used by nothing else);
2. the row is pointed at the copy in a transaction, only if it still names the old blob;
3. the old blob is deleted (or, when the row changed or went meanwhile, the copy is).

Idempotent and resumable: a blob already sealed is left alone, so a second run changes nothing, and a run
killed at any point leaves only blobs no row names (the copy before step 2, the old blob before step 3), which
the retention daemon's orphan sweep deletes once older than its margin (retention/orphans.py): the next run
simply goes on with the rows still naming a plaintext blob. Several runs at once (processes starting together)
are safe: step 2 is conditional, the loser deletes its copy.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import peewee as pw

from faceharmony.core.blobstore.base import BlobNotFound, BlobStore, Role
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.models import GeneratedPhoto, MaintenanceStep, ModelVersion, Photo
from faceharmony.core.keys.errors import KeyShredded
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.keys.keyring import keyring as installed_keyring
from faceharmony.core.settings import Settings

log = logging.getLogger(__name__)

STEP = "reseal_legacy_blobs"  # its row in maintenance_step once a whole pass has finished


def done(db: pw.Database) -> bool:
    """True once a whole reseal pass finished (nothing an older version left plain remains); the launcher waits
    for it before starting the trainer and order worker."""
    with db.connection_context():
        return MaintenanceStep.get_or_none(MaintenanceStep.step == STEP) is not None


# Which columns of which table name the blobs of each kind (as retention/orphans.py's REFERENCES).
REFERENCES: tuple[tuple[str, type[pw.Model], pw.Field], ...] = (
    ("photos", Photo, Photo.blob_id),
    ("models", ModelVersion, ModelVersion.adapter_blob_id),
    ("models", ModelVersion, ModelVersion.metadata_blob_id),
    ("generated", GeneratedPhoto, GeneratedPhoto.blob_id),
    ("generated", GeneratedPhoto, GeneratedPhoto.preview_blob_id),
)


def reseal_legacy_blobs(
    db: pw.Database,
    settings: Settings,
    *,
    store: BlobStore | None = None,
    keyring: Keyring | None = None,
    batch: int = 500,
) -> dict[str, int]:
    """Seals every plaintext blob a row names (see the module docstring); returns how many were resealed per kind.
    `store`: a store of the MIGRATION role (default: the configured one, with `keyring` or the process's).
    Once a whole pass has finished it is recorded (maintenance_step) and later calls return at once: a version
    that seals every blob never leaves a plaintext one again."""
    resealed = {kind: 0 for kind, _, _ in REFERENCES}
    if done(db):
        return resealed
    if store is None:
        from faceharmony.core.blobstore.factory import open_blob_store

        if keyring is None and installed_keyring._keyring is None:  # a caller that opened none (admin migrate)
            from faceharmony.core.keys.factory import install_keyring

            keyring = install_keyring(settings)
        store = open_blob_store(settings, Role.MIGRATION, keyring)
    if store.role is not Role.MIGRATION:
        raise ValueError("the reseal step needs a store of the migration role")
    for kind, model, column in REFERENCES:
        resealed[kind] += _reseal_column(db, store, kind, model, column, batch)
    with write_transaction(db):
        MaintenanceStep.insert(step=STEP, done_at=dt.datetime.now(dt.UTC)).on_conflict_ignore().execute()
    if any(resealed.values()):
        log.info("legacy blobs sealed", extra={f"resealed_{k}": v for k, v in resealed.items()})
    return resealed


def _reseal_column(
    db: pw.Database, store: BlobStore, kind: str, model: type[pw.Model], column: pw.Field, batch: int
) -> int:
    count = 0
    after = ""
    pk: Any = model._meta.primary_key
    key_column = model._meta.fields["key_id"]
    while True:
        query = model.select(pk, column, key_column).where(pk > after).order_by(pk).limit(batch)
        rows: list[tuple[str, str, str]] = list(query.tuples())  # type: ignore[arg-type]
        if not rows:
            return count
        after = rows[-1][0]
        for row_id, blob_id, key_id in rows:
            if not key_id:
                raise RuntimeError(f"{model._meta.table_name} {row_id} has no key_id: the schema migrations come first")
            try:
                new_id = store.reseal(kind, blob_id, key_id=key_id)
            except BlobNotFound:
                continue  # deleted meanwhile (a purge, or another run resealed it and moved the row on)
            except KeyShredded:
                continue  # the owner is being purged: the retention daemon deletes row and blob
            if new_id is None:
                continue  # sealed already
            with write_transaction(db):
                moved = model.update({column: new_id}).where(pk == row_id, column == blob_id).execute()
            if moved:
                store.delete(kind, blob_id)
                count += 1
            else:  # the row changed or went meanwhile: the copy is nobody's
                store.delete(kind, new_id)
