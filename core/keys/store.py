"""The key store: one wrapped data key per person, in a store whose deletion is final.

The main database cannot hold them: a deleted row stays readable in SQLite's WAL and free pages, and in
PostgreSQL's dead tuples, WAL, WAL archives and backups. The embedded store is its own SQLite file with
`secure_delete` (a deleted row's bytes are overwritten with zeros in the file) and a rollback journal that
is deleted after each transaction (no WAL keeps old pages), 0600 in the data folder. What a backup of the
key store keeps is covered by the KEK rotation (core/keys/keyring.py): every wrapped key in it needs a KEK
version that is destroyed once older than the backup window.

Production with several machines uses a bucket of its own (core/keys/gcs_store.py), with soft delete and
versioning off, which the store checks.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from faceharmony.core.datadir import private_dir, private_file
from faceharmony.core.keys.errors import KeysUnavailable


@dataclass(frozen=True)
class WrappedKey:
    key_id: str
    wrapped: bytes
    kek_version: str
    created: dt.datetime


class KeyStore(Protocol):
    def put(self, key: WrappedKey) -> None:
        """Stores a new key; never overwrites one (FileExistsError)."""
        ...

    def get(self, key_id: str) -> WrappedKey | None: ...

    def replace(self, key: WrappedKey, expected_version: str) -> bool:
        """Rewraps in place if the stored key still has `expected_version`; False if it changed or is gone."""
        ...

    def delete(self, key_id: str) -> bool:
        """Deletes for good; True if it existed. Idempotent."""
        ...

    def list(self) -> Iterator[WrappedKey]: ...

    def count(self) -> int: ...

    def empty(self) -> bool:
        """True when the store holds no key (cheap: a fresh install)."""
        ...

    def check(self) -> None:
        """Refuses (KeysUnavailable) a store whose deletions would not be final or that cannot be reached."""
        ...


def _ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


class SqliteKeyStore:
    """The embedded key store: `<data>/keys/keystore.sqlite3`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            private_dir(self.path.parent)
            private_file(self.path)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=DELETE")  # no WAL: a deleted key's old page is kept nowhere
            conn.execute("PRAGMA secure_delete=ON")  # a deleted row's bytes are zeroed in the file
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS data_key (key_id TEXT PRIMARY KEY, wrapped BLOB NOT NULL,"
                " kek_version TEXT NOT NULL, created_at TEXT NOT NULL)"
            )
        except (sqlite3.Error, OSError) as exc:
            raise KeysUnavailable(f"key store unusable: {exc}") from None
        self._local.conn = conn
        return conn

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._conn().execute(sql, args)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise KeysUnavailable(f"key store failed: {exc}") from None

    def put(self, key: WrappedKey) -> None:
        try:
            self._run(
                "INSERT INTO data_key (key_id, wrapped, kek_version, created_at) VALUES (?, ?, ?, ?)",
                (key.key_id, key.wrapped, key.kek_version, _ts(key.created)),
            )
        except sqlite3.IntegrityError:
            raise FileExistsError(key.key_id) from None

    def get(self, key_id: str) -> WrappedKey | None:
        row = self._run(
            "SELECT key_id, wrapped, kek_version, created_at FROM data_key WHERE key_id = ?", (key_id,)
        ).fetchone()
        return None if row is None else WrappedKey(row[0], bytes(row[1]), row[2], dt.datetime.fromisoformat(row[3]))

    def replace(self, key: WrappedKey, expected_version: str) -> bool:
        cur = self._run(
            "UPDATE data_key SET wrapped = ?, kek_version = ? WHERE key_id = ? AND kek_version = ?",
            (key.wrapped, key.kek_version, key.key_id, expected_version),
        )
        return cur.rowcount == 1

    def delete(self, key_id: str) -> bool:
        return self._run("DELETE FROM data_key WHERE key_id = ?", (key_id,)).rowcount == 1

    def list(self) -> Iterator[WrappedKey]:
        rows = self._run("SELECT key_id, wrapped, kek_version, created_at FROM data_key ORDER BY key_id").fetchall()
        for row in rows:
            yield WrappedKey(row[0], bytes(row[1]), row[2], dt.datetime.fromisoformat(row[3]))

    def count(self) -> int:
        return int(self._run("SELECT count(*) FROM data_key").fetchone()[0])

    def empty(self) -> bool:
        return self._run("SELECT 1 FROM data_key LIMIT 1").fetchone() is None

    def check(self) -> None:
        mode = self._run("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() == "wal":
            raise KeysUnavailable("the key store must not use a WAL: deleted keys would stay in it")
        self.count()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
