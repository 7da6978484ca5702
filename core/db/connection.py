"""Opening the database: SQLite (WAL, foreign keys, IMMEDIATE write transactions) by default, pooled PostgreSQL in production.

`write_transaction(db)` is the one way to open a transaction that writes:
on SQLite it takes the write lock up front (BEGIN IMMEDIATE), because a
read-then-write DEFERRED transaction fails at once under concurrent writers.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
from playhouse.pool import PooledPostgresqlDatabase

from faceharmony.core.datadir import private_dir, private_file, tighten
from faceharmony.core.db.models import database_proxy

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "busy_timeout": 10_000,
    "synchronous": "normal",
}


def open_database(url: str, pool_size: int = 10) -> pw.Database:
    """Opens (lazily) the database named by url and binds the models to it."""
    db = make_database(url, pool_size)
    database_proxy.initialize(db)
    return db


def make_database(url: str, pool_size: int = 10) -> pw.Database:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if str(path) != ":memory:":
            # The database file made 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
            # database file's mode (whatever the umask); loose ones left by an older version are tightened.
            private_dir(path.parent)
            private_file(path)
            for suffix in ("-wal", "-shm"):
                tighten(path.with_name(path.name + suffix))
        return pw.SqliteDatabase(str(path), pragmas=SQLITE_PRAGMAS, timeout=10, autoconnect=True)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise ValueError("unsupported database URL scheme")
    query = dict(urllib.parse.parse_qsl(parsed.query))
    return PooledPostgresqlDatabase(
        parsed.path.lstrip("/"),
        user=urllib.parse.unquote(parsed.username or "") or None,
        password=urllib.parse.unquote(parsed.password or "") or None,
        host=parsed.hostname or None,
        port=parsed.port,
        max_connections=pool_size,
        stale_timeout=300,
        timeout=10,
        autoconnect=True,
        **query,
    )


def close_database(db: pw.Database) -> None:
    """Closes every connection, pooled ones included."""
    if isinstance(db, PooledPostgresqlDatabase):
        db.close_all()
    elif not db.is_closed():
        db.close()


def is_sqlite(db: pw.Database) -> bool:
    return isinstance(db, pw.SqliteDatabase)


@contextlib.contextmanager
def write_transaction(db: pw.Database) -> Iterator[None]:
    """A transaction that will write; IMMEDIATE on SQLite."""
    if is_sqlite(db):
        with db.atomic("IMMEDIATE"):
            yield
    else:
        with db.atomic():
            yield
