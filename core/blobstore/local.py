"""The local-folder blob store (embedded default): <root>/<kind>/<id>, files 0600 in 0700 folders, written atomically (temporary file, fsync, link into place), never overwritten.

What reaches a file is already sealed with the owner's data key (core/blobstore/base.py): no photo, adapter or
image byte is ever in a file in the clear, temporary files included.

A writer killed before it removes its temporary file (`.tmp-<id>-<random>`, core/tempfiles.py) leaves it
behind, after the link as a second name of the blob's file: `sweep_temporary` (the retention daemon's orphan
sweep) deletes those older than the margin.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

from faceharmony.core import tempfiles
from faceharmony.core.blobstore.base import KINDS, BlobError, BlobInfo, BlobNotFound, BlobStore, Role
from faceharmony.core.datadir import private_dir
from faceharmony.core.keys.keyring import Keyring, KeyringProxy


class LocalBlobStore(BlobStore):
    backend = "local"

    def __init__(self, root: Path, role: Role, keyring: Keyring | KeyringProxy | None = None) -> None:
        super().__init__(role, keyring)
        self.root = Path(root)

    def _dir(self, kind: str) -> Path:
        path = self.root / kind
        try:
            private_dir(path)  # 0700 with its parents, whatever the umask
        except OSError as exc:
            raise BlobError(f"local blob folder unusable: {exc.strerror}") from exc
        return path

    def _create(self, kind: str, blob_id: str, data: bytes, content_type: str) -> None:
        folder = self._dir(kind)
        tmp = tempfiles.temporary_path(folder, blob_id)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, folder / blob_id)  # fails rather than overwrite
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise BlobError(f"local blob write failed: {exc.strerror}") from exc
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass

    def _read(self, kind: str, blob_id: str) -> bytes:
        try:
            return (self.root / kind / blob_id).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"{kind} blob not found") from None
        except OSError as exc:
            raise BlobError(f"local blob read failed: {exc.strerror}") from exc

    def _read_head(self, kind: str, blob_id: str, size: int) -> bytes:
        try:
            with open(self.root / kind / blob_id, "rb") as fh:
                return fh.read(size)
        except FileNotFoundError:
            raise BlobNotFound(f"{kind} blob not found") from None
        except OSError as exc:
            raise BlobError(f"local blob read failed: {exc.strerror}") from exc

    def _delete(self, kind: str, blob_id: str) -> bool:
        try:
            (self.root / kind / blob_id).unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BlobError(f"local blob delete failed: {exc.strerror}") from exc

    def soft_delete_seconds(self) -> int:
        return 0  # an unlinked file is gone

    def keeps_deleted_versions(self) -> bool:
        return False

    def _sweep_temporary(self, cutoff: dt.datetime, dry_run: bool) -> int:
        return sum(tempfiles.sweep_stale(self.root / kind, cutoff, dry_run) for kind in KINDS)

    def _list(self, kind: str) -> Iterator[BlobInfo]:
        folder = self.root / kind
        if not folder.exists():
            return
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                st = entry.stat()
                yield BlobInfo(kind, entry.name, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))
