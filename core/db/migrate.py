"""Applies the schema migrations in migrations/ with peewee's own runner (playhouse.migrations).

Safe to call from several processes at once: on PostgreSQL an advisory lock
serialises runners; on SQLite the runner's history table and each migration's
transaction do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import peewee as pw
from playhouse.migrations import Runner

from faceharmony.core.db.connection import is_sqlite

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_ADVISORY_LOCK_KEY = 0x46_48_4D_49  # "FHMI"

log = logging.getLogger(__name__)


def runner(db: pw.Database) -> Runner:
    return Runner(db, directory=str(MIGRATIONS_DIR))


def pending(db: pw.Database) -> list[str]:
    return [m.name for m in runner(db).status() if m.applied is None and m.path is not None]


def migrate(db: pw.Database) -> list[str]:
    """Applies every pending migration; returns the names applied."""
    if is_sqlite(db):
        applied = runner(db).up()
    else:
        with db.connection_context():
            db.execute_sql("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
            try:
                applied = runner(db).up()
            finally:
                db.execute_sql("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    for name in applied:
        log.info("migration applied", extra={"migration": name})
    return applied
