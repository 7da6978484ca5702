"""The orphan sweep: blobs that no row names, older than a safety margin, are deleted.

A blob without a row is what an upload leaves when its process or database
fails between writing the blob and committing the row. The margin keeps the
sweep away from uploads still in flight, so `now` must be the real time (the
blobs' creation times are real), never a policy moment such as `--now`.
Deleting is idempotent, so two sweeps at once do no harm.

The same sweep deletes the temporary files a crash left behind (core/tempfiles.py):
a blob store's unfinished writes, and the `.tmp-*` entries of the data folder's
scratch folder and email outbox, once last modified before the same margin.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import peewee as pw

from faceharmony.core import tempfiles
from faceharmony.core.blobstore.base import BlobStore
from faceharmony.core.db.models import GeneratedPhoto, ModelVersion, Photo
from faceharmony.core.settings import Settings

log = logging.getLogger(__name__)

# Which columns name the blobs of each kind.
REFERENCES: dict[str, tuple[pw.Field, ...]] = {
    "photos": (Photo.blob_id,),
    "models": (ModelVersion.adapter_blob_id, ModelVersion.metadata_blob_id),
    "generated": (GeneratedPhoto.blob_id, GeneratedPhoto.preview_blob_id),
}


def sweep_orphan_blobs(
    db: pw.Database,
    store: BlobStore,
    now: dt.datetime,
    margin: dt.timedelta | None = None,
    batch: int | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Deletes unreferenced blobs created before now - margin (dry_run: only counts them); returns the count per
    kind. `now` is the real time; margin and batch default to the settings' defaults (the daemon passes its own)."""
    margin = dt.timedelta(hours=Settings.orphan_margin_hours) if margin is None else margin
    batch = Settings.retention_batch_size if batch is None else batch
    deleted: dict[str, int] = {}
    cutoff = now - margin
    for kind, columns in REFERENCES.items():
        deleted[kind] = 0
        candidates: list[str] = []
        for info in store.list(kind):
            if info.created <= cutoff:
                candidates.append(info.blob_id)
            if len(candidates) >= batch:
                deleted[kind] += _delete_unreferenced(store, kind, columns, candidates, dry_run)
                candidates = []
        deleted[kind] += _delete_unreferenced(store, kind, columns, candidates, dry_run)
    if any(deleted.values()) and not dry_run:
        log.info("orphan blobs swept", extra={f"swept_{k}": v for k, v in deleted.items()})
    return deleted


def _delete_unreferenced(
    store: BlobStore, kind: str, columns: tuple[pw.Field, ...], blob_ids: list[str], dry_run: bool = False
) -> int:
    if not blob_ids:
        return 0
    referenced = {
        row[0] for column in columns for row in column.model.select(column).where(column.in_(blob_ids)).tuples()
    }
    count = 0
    for blob_id in blob_ids:
        if blob_id not in referenced and (dry_run or store.delete(kind, blob_id)):
            count += 1
    return count


def temporary_folders(settings: Settings) -> tuple[Path, ...]:
    """The data folder's folders where temporary files holding personal data are made (besides the blob store)."""
    return (settings.data_dir / tempfiles.SCRATCH_FOLDER, settings.outbox_dir)


def sweep_temporary_files(
    store: BlobStore,
    folders: tuple[Path, ...],
    now: dt.datetime,
    margin: dt.timedelta | None = None,
    dry_run: bool = False,
) -> int:
    """Deletes the temporary files of unfinished writes (the store's, and those in `folders`) last modified before
    now - margin (dry_run: only counts them); returns how many. `now` is the real time, as for the blobs."""
    margin = dt.timedelta(hours=Settings.orphan_margin_hours) if margin is None else margin
    cutoff = now - margin
    count = store.sweep_temporary(cutoff, dry_run) + sum(tempfiles.sweep_stale(f, cutoff, dry_run) for f in folders)
    if count and not dry_run:
        log.info("temporary files swept", extra={"swept_temporary_files": count})
    return count
