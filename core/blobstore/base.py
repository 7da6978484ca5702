"""The blob-store contract and the storage-role table (ARCHITECTURE.md, P9/P12).

| role      | photos/              | models/              | generated/           |
|-----------|----------------------|----------------------|----------------------|
| api       | create               | -                    | read                 |
| trainer   | read                 | create               | -                    |
| order     | -                    | read                 | create               |
| retention | delete               | delete               | delete               |
| migration | read, create, delete | read, create, delete | read, create, delete |

A store is opened for exactly one role and refuses everything else with
BlobPermissionError before touching storage; on GCS the same table is also
the IAM grants of each role's service account (docker/README.md). The
retention role may also list (to sweep blobs with no row). The migration role
is used only by the reseal step (core/blobstore/reseal.py), which seals the
plaintext blobs an install from before issue 12 left. Ids are 128-bit random
hex strings made by the store: a caller can never choose a name.

Every blob is sealed with its owner's data key inside the store (one place, both backends):
`create(kind, data, key_id=...)` stores only `aead.seal(key, data, aead.blob_aad(kind, blob_id, key_id))`, and
`read(kind, blob_id, key_id=...)` opens it. Nothing the store writes is plaintext, and a read never returns
bytes that did not open: a blob that is not sealed, sealed with another person's key, or copied under another
id or kind raises CiphertextInvalid; one whose key was shredded raises KeyShredded. The keys come from the
keyring given to the store, else the process's (core.keys.keyring.keyring, set by install_keyring); the
retention role needs none (it only lists and deletes).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass

from faceharmony.core import ids
from faceharmony.core.keys import aead
from faceharmony.core.keys.keyring import Keyring, KeyringProxy
from faceharmony.core.keys.keyring import keyring as installed_keyring

KINDS = ("photos", "models", "generated")


class Role(enum.Enum):
    API = "api"
    TRAINER = "trainer"
    ORDER = "order"
    RETENTION = "retention"
    MIGRATION = "migration"


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
    Role.MIGRATION: {kind: frozenset({Op.READ, Op.CREATE, Op.DELETE}) for kind in KINDS},
}

_BLOB_ID = re.compile(r"^[0-9a-f]{32}$")
SEALED_CONTENT_TYPE = "application/octet-stream"  # what every stored object is: ciphertext


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

    def __init__(self, role: Role, keyring: Keyring | KeyringProxy | None = None) -> None:
        self.role = role
        self._keyring = keyring

    @property
    def keyring(self) -> Keyring | KeyringProxy:
        """The keyring that seals and opens this store's blobs: the one given, else the process's."""
        return self._keyring if self._keyring is not None else installed_keyring

    def _check(self, kind: str, op: Op, blob_id: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown blob kind {kind!r}")
        if op not in PERMISSIONS[self.role].get(kind, frozenset()):
            raise BlobPermissionError(f"role {self.role.value} may not {op.value} {kind}")
        if blob_id is not None and not _BLOB_ID.fullmatch(blob_id):
            raise ValueError("not a blob id")

    @staticmethod
    def _check_key(key_id: str) -> None:
        if not isinstance(key_id, str) or not _BLOB_ID.fullmatch(key_id):
            raise ValueError("not a key id")

    def create(self, kind: str, data: bytes, content_type: str = "application/octet-stream", *, key_id: str) -> str:
        """Seals data with the owner's key `key_id` and stores it under a new random id; never overwrites.
        Returns the id. `content_type` describes the plaintext; the stored object is opaque ciphertext."""
        self._check(kind, Op.CREATE)
        self._check_key(key_id)
        blob_id = ids.new_id()
        sealed = self.keyring.seal(key_id, bytes(data), aead.blob_aad(kind, blob_id, key_id))
        self._create(kind, blob_id, sealed, SEALED_CONTENT_TYPE)
        return blob_id

    def read(self, kind: str, blob_id: str, *, key_id: str) -> bytes:
        """The plaintext of a blob sealed with `key_id`: BlobNotFound when absent, CiphertextInvalid when the stored
        bytes do not open with that key at this kind and id (not sealed, another person's key, moved)."""
        self._check(kind, Op.READ, blob_id)
        self._check_key(key_id)
        return self.keyring.open(key_id, self._read(kind, blob_id), aead.blob_aad(kind, blob_id, key_id))

    def reseal(self, kind: str, blob_id: str, *, key_id: str) -> str | None:
        """Migration role only: when the stored blob is not sealed (an install from before issue 12), stores a
        sealed copy under a new id and returns that id; None when it is sealed already. The old blob is left for
        the caller to delete once the row names the copy (core/blobstore/reseal.py)."""
        for op in (Op.READ, Op.CREATE):
            self._check(kind, op, blob_id)
        if self.role is not Role.MIGRATION:
            raise BlobPermissionError(f"role {self.role.value} may not reseal {kind}")
        self._check_key(key_id)
        if aead.is_sealed(self._read_head(kind, blob_id, aead.OVERHEAD)):
            return None
        plaintext = self._read(kind, blob_id)
        if aead.is_sealed(plaintext):  # sealed meanwhile by a concurrent reseal? (a blob is never rewritten)
            return None
        new_id = ids.new_id()
        sealed = self.keyring.seal(key_id, plaintext, aead.blob_aad(kind, new_id, key_id))
        self._create(kind, new_id, sealed, SEALED_CONTENT_TYPE)
        return new_id

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
        """The stored (sealed) bytes, never opened: only create/read/reseal above call it."""
        raise NotImplementedError

    def _read_head(self, kind: str, blob_id: str, size: int) -> bytes:
        """The first `size` stored bytes (a backend may read less than the whole blob)."""
        return self._read(kind, blob_id)[:size]

    def _delete(self, kind: str, blob_id: str) -> bool:
        raise NotImplementedError

    def _list(self, kind: str) -> Iterator[BlobInfo]:
        raise NotImplementedError
