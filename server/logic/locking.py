"""Row locking that reads the same on both databases."""

from __future__ import annotations

import peewee as pw

from faceharmony.core.db.connection import is_sqlite


def locked(query, db: pw.Database):
    """SELECT ... FOR UPDATE on PostgreSQL; on SQLite the IMMEDIATE transaction already holds the write lock."""
    return query if is_sqlite(db) else query.for_update()
