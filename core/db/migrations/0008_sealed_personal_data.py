"""Personal data sealed per person (issue 12): a `key_id` on every row that holds a person's data or owns their blobs, the personal columns turned into sealed bytes (AES-GCM under the person's data key, core/keys), and the email uniques moved to email_hmac.

Existing rows are sealed in the migration's own transaction (a failure leaves the database as 0007 left it):
each account gets a new data key, and the rows linked to it (its waiting-list entry, the invitation that made
it, and everything it owns) take the account's key; a waiting-list entry or invitation without an account, and
a queued email without one, get a new key of their own. Keys come from the process's keyring
(core.keys.keyring.keyring, installed by core/keys/factory.py install_keyring): with rows to seal and no keyring
the migration stops with a RuntimeError. A key made by a migration that then fails is an orphan that the
retention daemon's key sweep shreds. Not reversible: down() refuses (the plaintext is not kept anywhere).
"""

from peewee import *

from faceharmony.core.keys import aead
from faceharmony.core.keys.keyring import keyring

# table -> its personal columns (the column names stay; their type becomes BLOB / bytea)
SEALED = {
    "account": ("email", "name"),
    "waitlist_entry": ("email", "name", "note"),
    "invitation": ("email", "name"),
    "email_queue": ("to_address", "subject", "body"),
    "ticket": ("subject",),
    "ticket_message": ("body",),
    "user_model": ("display_name",),
}

# table -> the SQL that gives each row's key_id from rows already keyed (None: a new key when no row links it)
KEYED_BY = [
    ("account", None),
    ("waitlist_entry", "SELECT a.key_id FROM account a WHERE a.id = {t}.account_id"),
    ("invitation", "SELECT a.key_id FROM account a WHERE a.id = {t}.account_id"),
    ("email_queue", "SELECT a.key_id FROM account a WHERE a.id = {t}.account_id"),
    ("ticket", "SELECT a.key_id FROM account a WHERE a.id = {t}.account_id"),
    ("ticket_message", "SELECT k.key_id FROM ticket k WHERE k.id = {t}.ticket_id"),
    ("user_model", "SELECT a.key_id FROM account a WHERE a.id = {t}.account_id"),
    ("photo", "SELECT a.key_id FROM account a WHERE a.id = {t}.account_id"),
    ("model_version", "SELECT u.key_id FROM user_model u WHERE u.id = {t}.model_id"),
    ("photo_order", "SELECT a.key_id FROM account a WHERE a.id = {t}.account_id"),
    ("generated_photo", "SELECT a.key_id FROM account a WHERE a.id = {t}.account_id"),
]
# Rows that must be linked to a keyed row (they all have a NOT NULL foreign key to it): never a key of their own.
LINKED_ONLY = {"ticket", "ticket_message", "user_model", "photo", "model_version", "photo_order", "generated_photo"}

EMAIL_UNIQUE = ("account", "waitlist_entry")


def _q(name):
    return f'"{name}"'


def _sqlite(db):
    return isinstance(db, SqliteDatabase)


def _need_keyring(db):
    rows = sum(db.execute_sql(f"SELECT COUNT(*) FROM {_q(t)}").fetchone()[0] for t in SEALED)
    if not rows:
        return
    try:
        _ = keyring.obj
    except RuntimeError:
        raise RuntimeError(
            "migration 0008 seals the existing personal data and needs the data keys: install the keyring first"
            " (core.keys.factory.install_keyring(settings)); nothing was changed"
        ) from None


def _index_names(db, table, column):
    return [i.name for i in db.get_indexes(table) if list(i.columns) == [column]]


def up(migrator, db):
    # 1. key_id columns (nullable until every row has one)
    for table, _ in KEYED_BY:
        migrator.migrate(migrator.add_column(table, "key_id", CharField(max_length=32, null=True)))
    _need_keyring(db)

    # 2. a key per person: accounts first, then the rows linked to them, then the rest a key each
    for table, linked in KEYED_BY:
        if linked is not None:
            db.execute_sql(f"UPDATE {_q(table)} SET key_id = ({linked.format(t=_q(table))})")
        if table in LINKED_ONLY:
            continue
        for (row_id,) in db.execute_sql(f"SELECT id FROM {_q(table)} WHERE key_id IS NULL").fetchall():
            db.execute_sql(
                f"UPDATE {_q(table)} SET key_id = {db.param} WHERE id = {db.param}", (keyring.new_key(), row_id)
            )

    # 3. the personal columns: read the plaintext, change the type, write the sealed bytes
    for table, columns in SEALED.items():
        for column in columns:
            for name in _index_names(db, table, column):
                migrator.migrate(migrator.drop_index(table, name))
        rows = db.execute_sql(
            "SELECT id, key_id, {} FROM {}".format(", ".join(_q(c) for c in columns), _q(table))
        ).fetchall()
        for column in columns:
            if _sqlite(db):
                migrator.migrate(migrator.alter_column_type(table, column, BlobField()))
            else:
                migrator.migrate(
                    migrator.alter_column_type(table, column, BlobField(), cast=f"convert_to({_q(column)}, 'UTF8')")
                )
        assign = ", ".join(f"{_q(c)} = {db.param}" for c in columns)
        sql = f"UPDATE {_q(table)} SET {assign} WHERE id = {db.param}"
        for row_id, key_id, *values in rows:
            sealed = [
                keyring.seal_text(key_id, value, aead.field_aad(table, column, row_id, key_id))
                for column, value in zip(columns, values)
            ]
            db.execute_sql(sql, (*sealed, row_id))

    # 4. key_id NOT NULL and indexed; the email uniques on the HMAC
    for table, _ in KEYED_BY:
        missing = db.execute_sql(f"SELECT COUNT(*) FROM {_q(table)} WHERE key_id IS NULL").fetchone()[0]
        if missing:
            raise RuntimeError(f"migration 0008: {missing} {table} rows have no key (not linked to an account)")
        migrator.migrate(migrator.add_not_null(table, "key_id"), migrator.add_index(table, ("key_id",), False))
    for table in EMAIL_UNIQUE:
        for name in _index_names(db, table, "email_hmac"):
            migrator.migrate(migrator.drop_index(table, name))
        migrator.migrate(migrator.add_index(table, ("email_hmac",), True))


def down(migrator, db):
    raise RuntimeError("migration 0008 is not reversible: the plaintext of the sealed columns is kept nowhere")
