"""What the logic functions read: settings, clock, hasher, database."""

from __future__ import annotations

from dataclasses import dataclass

import peewee as pw

from faceharmony.core.clock import Clock
from faceharmony.core.crypto import Hasher
from faceharmony.core.db.connection import is_sqlite
from faceharmony.core.settings import Settings


@dataclass(frozen=True)
class Deps:
    settings: Settings
    clock: Clock
    hasher: Hasher
    db: pw.Database


def locked(query, db: pw.Database):
    """SELECT ... FOR UPDATE on PostgreSQL; on SQLite the IMMEDIATE transaction already holds the write lock."""
    return query if is_sqlite(db) else query.for_update()
