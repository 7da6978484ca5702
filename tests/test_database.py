"""The database layer on both backends: migrations produce exactly the models' schema and are idempotent; SQLite runs in WAL with foreign keys; concurrent writers do not fail."""

from __future__ import annotations

import concurrent.futures

import peewee as pw
from playhouse.schema_diff import diff_models

from faceharmony.core import ids
from faceharmony.core.clock import ManualClock
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import close_database, is_sqlite, open_database, write_transaction
from faceharmony.core.db.migrate import migrate, pending
from faceharmony.core.keys.keyring import keyring


def test_migrations_match_the_models(database_url):
    db = open_database(database_url)
    migrate(db)
    assert migrate(db) == []
    assert pending(db) == []
    diff = diff_models(db, m.ALL_MODELS)
    assert not diff, diff
    close_database(db)


def test_sqlite_pragmas(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'p.sqlite3'}")
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    db.close()


def test_cascades_remove_an_accounts_rows(database_url):
    db = open_database(database_url)
    migrate(db)
    clock = ManualClock()
    now = clock.now()
    with write_transaction(db):
        acc = m.Account.create(
            id=ids.new_id(),
            key_id=keyring.new_key(),
            email="c@example.com",
            email_hmac="h",
            name="C",
            is_16_or_older=True,
            created_at=now,
            updated_at=now,
        )
        m.Session.create(id=ids.new_id(), token_hash="t" * 64, account=acc, created_at=now, expires_at=now)
        t = m.Ticket.create(
            id=ids.new_id(), account=acc, key_id=acc.key_id, subject="s", created_at=now, updated_at=now
        )
        m.TicketMessage.create(
            id=ids.new_id(), ticket=t, key_id=acc.key_id, seq=0, author="user", body="b", created_at=now
        )
        m.CreditEntry.create(id=ids.new_id(), account=acc, delta=1, kind="trial", created_at=now)
    with write_transaction(db):
        m.Account.delete().where(m.Account.id == acc.id).execute()
    for model in (m.Session, m.Ticket, m.TicketMessage, m.CreditEntry):
        assert model.select().count() == 0, model
    close_database(db)


def test_concurrent_read_then_write_transactions(database_url):
    """Many threads each read a counter and write it back: IMMEDIATE (SQLite) / row locks (PostgreSQL) lose no update."""
    db = open_database(database_url, pool_size=8)
    migrate(db)
    now = ManualClock().now()
    with write_transaction(db):
        m.Account.create(
            id="0" * 32,
            key_id=keyring.new_key(),
            email="n@example.com",
            email_hmac="h",
            name="0",
            is_16_or_older=True,
            created_at=now,
            updated_at=now,
        )

    def bump(_):
        db.connect(reuse_if_open=True)
        try:
            with write_transaction(db):
                q = m.Account.select().where(m.Account.id == "0" * 32)
                row = (q if is_sqlite(db) else q.for_update()).get()
                row.name = str(int(row.name) + 1)
                row.save()
        finally:
            db.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(bump, range(80)))
    assert m.Account.get_by_id("0" * 32).name == "80"
    close_database(db)


def test_unique_constraints_hold(database_url):
    db = open_database(database_url)
    migrate(db)
    now = ManualClock().now()
    with write_transaction(db):
        m.Account.create(
            id=ids.new_id(),
            key_id=keyring.new_key(),
            email="u@example.com",
            email_hmac="h",
            name="U",
            is_16_or_older=True,
            created_at=now,
            updated_at=now,
        )
    try:
        with write_transaction(db):
            m.Account.create(
                id=ids.new_id(),
                key_id=keyring.new_key(),
                email="u@example.com",
                email_hmac="h",
                name="U",
                is_16_or_older=True,
                created_at=now,
                updated_at=now,
            )
        raise AssertionError("duplicate email (its HMAC) accepted")
    except pw.IntegrityError:
        pass
    close_database(db)


def test_migration_0006_requests_the_evictions_of_versions_already_unservable(database_url):
    """Before 0006 only an in-memory sweep evicted models pending deletion from Triton, and the adapters of
    deactivated accounts were never evicted: the migration writes a record for each version unservable now."""
    import importlib.util

    from playhouse.migrate import SchemaMigrator

    from faceharmony.core.db.migrate import MIGRATIONS_DIR

    db = open_database(database_url)
    migrate(db)
    now = ManualClock().now()

    def model(state: str, account_state: str) -> str:
        acc = m.Account.create(
            id=ids.new_id(),
            key_id=keyring.new_key(),
            email=f"{ids.new_id()}@example.com",
            email_hmac=ids.new_id(),
            name="M",
            is_16_or_older=True,
            state=account_state,
            created_at=now,
            updated_at=now,
        )
        row = m.UserModel.create(
            id=ids.new_id(),
            account=acc,
            key_id=acc.key_id,
            display_name="Me",
            state=state,
            trigger_token="sks",
            created_at=now,
            updated_at=now,
        )
        job = m.TrainingJob.create(
            id=ids.new_id(),
            model=row,
            kind="train",
            state="succeeded",
            max_attempts=3,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        m.ModelVersion.create(
            id=ids.new_id(),
            model=row,
            key_id=acc.key_id,
            version=1,
            job=job,
            adapter_blob_id=ids.new_id(),
            metadata_blob_id=ids.new_id(),
            base_fingerprint="0" * 64,
            created_at=now,
        )
        return row.id

    with write_transaction(db):
        deleted, deactivated, servable = (
            model("pending_deletion", "active"),
            model("ready", "deactivated"),
            model("ready", "active"),
        )
    db.execute_sql("DROP TABLE model_eviction")  # as before 0006
    spec = importlib.util.spec_from_file_location("m0006", MIGRATIONS_DIR / "0006_model_evictions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with db.atomic():
        module.up(SchemaMigrator.from_database(db), db)
    assert sorted((e.model_id, e.version) for e in m.ModelEviction.select()) == sorted([(deleted, 1), (deactivated, 1)])
    assert servable not in {e.model_id for e in m.ModelEviction.select()}
    close_database(db)
