"""The blob-store contract and the storage-role table (ARCHITECTURE.md, P9/P12).

| role      | photos/ | models/ | generated/ |
|-----------|---------|---------|------------|
| api       | create  | -       | read       |
| trainer   | read    | create  | -          |
| order     | -       | read    | create     |
| retention | delete  | delete  | delete     |

A store is opened for exactly one role and refuses everything else with
BlobPermissionError before touching storage; on GCS the same table is also
the IAM grants of each role's service account (docker/README.md). The
retention role may also list (to sweep blobs with no row). Ids are 128-bit
random hex strings made by the store: a caller can never choose a name.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass

from faceharmony.core import ids

KINDS = ("photos", "models", "generated")


class Role(enum.Enum):
    API = "api"
    TRAINER = "trainer"
    ORDER = "order"
    RETENTION = "retention"


class Op(enum.Enum):
    CREATE = "create"
    READ = "read"
    DELETE = "delete"
    LIST = "list"


PERMISSIONS: dict[Role, dict[str, frozenset[Op]]] = {
    Role.API: {"photos": frozenset({Op.CREATE}), "generated": frozenset({Op.READ})},
    Role.TRAINER: {"photos": frozenset({Op.READ}), "models": frozenset({Op.CREATE})},
    Role.ORDER: {"models": frozenset({Op.READ}), "generated": frozenset({Op.CREATE})},
    Role.RETENTION: {kind: frozenset({Op.DELETE, Op.LIST}) for kind in KINDS},
}

_BLOB_ID = re.compile(r"^[0-9a-f]{32}$")


class BlobError(Exception):
    """The store failed (I/O, network): the operation did not happen or its outcome is unknown."""


class BlobPermissionError(BlobError):
    """The role may not do this to this kind of blob."""


class BlobNotFound(BlobError):
    pass


@dataclass(frozen=True)
class BlobInfo:
    kind: str
    blob_id: str
    size: int
    created: dt.datetime


class BlobStore:
    """Role-checked operations; backends implement the underscore methods."""

    backend = "abstract"

    def __init__(self, role: Role) -> None:
        self.role = role

    def _check(self, kind: str, op: Op, blob_id: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown blob kind {kind!r}")
        if op not in PERMISSIONS[self.role].get(kind, frozenset()):
            raise BlobPermissionError(f"role {self.role.value} may not {op.value} {kind}")
        if blob_id is not None and not _BLOB_ID.fullmatch(blob_id):
            raise ValueError("not a blob id")

    def create(self, kind: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Stores data under a new random id; never overwrites. Returns the id."""
        self._check(kind, Op.CREATE)
        blob_id = ids.new_id()
        self._create(kind, blob_id, data, content_type)
        return blob_id

    def read(self, kind: str, blob_id: str) -> bytes:
        self._check(kind, Op.READ, blob_id)
        return self._read(kind, blob_id)

    def delete(self, kind: str, blob_id: str) -> bool:
        """Deletes; True if it existed. Idempotent."""
        self._check(kind, Op.DELETE, blob_id)
        return self._delete(kind, blob_id)

    def list(self, kind: str) -> Iterator[BlobInfo]:
        self._check(kind, Op.LIST)
        return self._list(kind)

    def soft_delete_seconds(self) -> int:
        """How long a deleted blob stays recoverable (0: deleting is final). On GCS this reads the bucket's
        policy, which needs `storage.buckets.get`: only the retention daemon calls it."""
        raise NotImplementedError

    def keeps_deleted_versions(self) -> bool:
        """True when a delete leaves a noncurrent copy behind (GCS object versioning): then no delete is final,
        for as long as the copy is kept. On GCS this reads the bucket's metadata: only the retention daemon calls it."""
        raise NotImplementedError

    def sweep_temporary(self, cutoff: dt.datetime, dry_run: bool = False) -> int:
        """Deletes the temporary files of writes that never finished (a writer killed mid-write) last modified
        before `cutoff` (a real time); returns how many (dry_run: only counts them). Retention role only."""
        for kind in KINDS:
            self._check(kind, Op.DELETE)
        return self._sweep_temporary(cutoff, dry_run)

    # backends
    def _sweep_temporary(self, cutoff: dt.datetime, dry_run: bool) -> int:
        return 0  # a backend that writes no temporary file (GCS uploads from memory)

    def _create(self, kind: str, blob_id: str, data: bytes, content_type: str) -> None:
        raise NotImplementedError

    def _read(self, kind: str, blob_id: str) -> bytes:
        raise NotImplementedError

    def _delete(self, kind: str, blob_id: str) -> bool:
        raise NotImplementedError

    def _list(self, kind: str) -> Iterator[BlobInfo]:
        raise NotImplementedError
