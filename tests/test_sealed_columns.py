"""Personal columns sealed with their person's data key (issue 12), on SQLite and PostgreSQL: after normal use the
database holds only sealed bytes where emails, names, notes, tickets and queued emails were, the API answers in
plaintext, a sealed value moved to another row is DATA_LOSS/CIPHERTEXT_INVALID (never INTERNAL), and migration
0008 seals the rows an older version wrote, in one transaction, once."""

from __future__ import annotations

import datetime as dt
import email
import email.policy

import grpc
import pytest
from playhouse.schema_diff import diff_models

from faceharmony.core import ids
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import close_database, open_database, write_transaction
from faceharmony.core.db.migrate import MIGRATIONS_DIR, migrate, pending, runner
from faceharmony.core.db.sealed import SealedField
from faceharmony.core.email import queue
from faceharmony.core.keys import aead
from faceharmony.core.keys.kek import LocalKek
from faceharmony.core.keys.keyring import Keyring, keyring
from faceharmony.core.keys.store import SqliteKeyStore
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import admin_pb2 as ad
from faceharmony.v1 import support_pb2 as sp
from tests.support.harness import status_of

# The personal columns, read off the models (migration 0008 keeps its own list: each checks the other).
SEALED_COLUMNS = {
    model._meta.table_name: tuple(f.column_name for f in model._meta.sorted_fields if isinstance(f, SealedField))
    for model in m.ALL_MODELS
    if any(isinstance(f, SealedField) for f in model._meta.sorted_fields)
}


def raw_values(db, table: str, column: str) -> list[bytes]:
    return [bytes(v) for (v,) in db.execute_sql(f'SELECT "{column}" FROM "{table}"').fetchall()]


def assert_all_sealed(db, secrets: list[str]) -> int:
    """Every value of every personal column is sealed bytes holding none of `secrets`; returns how many."""
    seen = 0
    for table, columns in SEALED_COLUMNS.items():
        for column in columns:
            for value in raw_values(db, table, column):
                assert aead.is_sealed(value), (table, column)
                for secret in secrets:
                    assert secret.encode() not in value, (table, column, secret)
                seen += 1
    return seen


def test_normal_use_writes_only_sealed_personal_columns(harness):
    h = harness
    user = h.sign_up("ada.sealed@example.com", name="Ada Sealed")
    h.accounts.JoinWaitlist(
        a.JoinWaitlistRequest(
            name="Pat Pending", email="pat.pending@example.com", is_16_or_older=True, note="my secret note"
        )
    )
    h.accounts.InviteFriend(
        a.InviteFriendRequest(email="finn.friend@example.com", name="Finn Friend"), metadata=user.md
    )
    h.accounts.UpdateName(a.UpdateNameRequest(name="Ada Renamed"), metadata=user.md)
    ticket = h.support.CreateTicket(
        sp.CreateTicketRequest(subject="my private subject", body="my private body"), metadata=user.md
    ).ticket
    staff = h.staff("support")
    h.support.ReplyToTicket(sp.ReplyToTicketRequest(id=ticket.id, body="staff private reply"), metadata=staff.md)
    key_id = h.db_call(lambda: m.Account.get_by_id(user.account_id).key_id)

    def rows_of_the_models_layer():
        """A model (its API needs verified photos) and a queued email, written through the models; the queued
        email's raw columns read at once (the server's delivery loop deletes it once sent)."""
        now = h.clock.now()
        with write_transaction(h.db):
            m.UserModel.create(
                id=ids.new_id(),
                account=user.account_id,
                key_id=key_id,
                display_name="my private model",
                state="queued",
                trigger_token="sks",
                created_at=now,
                updated_at=now,
            )
            mail_id = queue.enqueue(clock=h.clock, kind="reactivated", to=user.email, name="Ada Queued", key_id=key_id)
        p = h.db.param
        return h.db.execute_sql(
            f'SELECT "to_address", "subject", "body", "key_id" FROM "email_queue" WHERE id = {p}', (mail_id,)
        ).fetchone()

    *mail, mail_key = h.db_call(rows_of_the_models_layer)
    assert mail_key == key_id and all(aead.is_sealed(bytes(v)) for v in mail)
    assert not any(b"ada.sealed@example.com" in bytes(v) or b"Ada Queued" in bytes(v) for v in mail)
    secrets = [
        "ada.sealed@example.com",
        "Ada Sealed",
        "Ada Renamed",
        "Ada Queued",
        "pat.pending@example.com",
        "Pat Pending",
        "my secret note",
        "finn.friend@example.com",
        "Finn Friend",
        "my private subject",
        "my private body",
        "staff private reply",
        "my private model",
    ]
    seen = h.db_call(assert_all_sealed, h.db, secrets)
    assert seen >= 16

    # Every row of the person carries their key; the API answers in plaintext.
    owned = [m.Ticket, m.TicketMessage, m.UserModel]
    for model in owned:
        keys = h.db_call(lambda model=model: {r.key_id for r in model.select(model.key_id)})
        assert key_id in keys, model
    assert h.db_call(lambda: m.WaitlistEntry.get(m.WaitlistEntry.account == user.account_id).key_id) == key_id
    me = h.accounts.GetAccount(a.GetAccountRequest(), metadata=user.md).account
    assert (me.email, me.name) == ("ada.sealed@example.com", "Ada Renamed")
    pending_entry = next(
        e
        for e in h.admin.ListWaitlist(ad.ListWaitlistRequest(page_size=200), metadata=staff.md).entries
        if e.email == "pat.pending@example.com"
    )
    assert (pending_entry.name, pending_entry.note) == ("Pat Pending", "my secret note")
    got = h.support.GetTicket(sp.GetTicketRequest(id=ticket.id), metadata=user.md).ticket
    assert got.subject == "my private subject"
    assert [msg.body for msg in got.messages] == ["my private body", "staff private reply"]
    # The queued emails open to send: the outbox has the plaintext (and the queue keeps nothing).
    h.deliver_emails()
    sent = {}
    for path in h.settings.outbox_dir.glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        sent[msg["To"]] = sent.get(msg["To"], "") + msg.get_content()
    assert "Ada Queued" in sent["ada.sealed@example.com"]
    assert "Finn Friend" in sent["finn.friend@example.com"]
    # Each person has a key of their own: the pending entry and the invitee are not the user's key.
    other_keys = h.db_call(
        lambda: {
            m.WaitlistEntry.get(m.WaitlistEntry.email_hmac == h.email_hmac("pat.pending@example.com")).key_id,
            m.Invitation.get(m.Invitation.email_hmac == h.email_hmac("finn.friend@example.com")).key_id,
        }
    )
    assert len(other_keys) == 2 and key_id not in other_keys
    assert all(keyring.exists(k) for k in {key_id, *other_keys})


def test_a_sealed_value_moved_to_another_row_is_data_loss(harness):
    h = harness
    ann, bob = h.sign_up("ann.moved@example.com", name="Ann"), h.sign_up("bob.moved@example.com", name="Bob")
    db = h.db

    def copy(sql_from: str, sql_to: str, *params):
        def run():
            value = db.execute_sql(sql_from, params[:1]).fetchone()[0]
            with write_transaction(db):
                db.execute_sql(sql_to, (value, *params[1:]))

        h.db_call(run)

    p = db.param
    # Ann's sealed name in Bob's row (another person's key and another row): refused, not garbage.
    copy(
        f'SELECT "name" FROM "account" WHERE id = {p}',
        f'UPDATE "account" SET "name" = {p} WHERE id = {p}',
        ann.account_id,
        bob.account_id,
    )
    assert status_of(h.accounts.GetAccount, a.GetAccountRequest(), metadata=bob.md) == (
        grpc.StatusCode.DATA_LOSS,
        "CIPHERTEXT_INVALID",
    )
    # Within one person: Ann's sealed email moved into her own name column (same key, another column).
    copy(
        f'SELECT "email" FROM "account" WHERE id = {p}',
        f'UPDATE "account" SET "name" = {p} WHERE id = {p}',
        ann.account_id,
        ann.account_id,
    )
    assert status_of(h.accounts.GetAccount, a.GetAccountRequest(), metadata=ann.md) == (
        grpc.StatusCode.DATA_LOSS,
        "CIPHERTEXT_INVALID",
    )
    # One ticket's subject in another ticket of the same person (same key, same column, another row).
    t1 = h.support.CreateTicket(sp.CreateTicketRequest(subject="one", body="b1"), metadata=ann.md).ticket
    t2 = h.support.CreateTicket(sp.CreateTicketRequest(subject="two", body="b2"), metadata=ann.md).ticket
    copy(
        f'SELECT "subject" FROM "ticket" WHERE id = {p}',
        f'UPDATE "ticket" SET "subject" = {p} WHERE id = {p}',
        t1.id,
        t2.id,
    )
    assert status_of(h.support.GetTicket, sp.GetTicketRequest(id=t2.id), metadata=ann.md) == (
        grpc.StatusCode.DATA_LOSS,
        "CIPHERTEXT_INVALID",
    )
    assert h.support.GetTicket(sp.GetTicketRequest(id=t1.id), metadata=ann.md).ticket.subject == "one"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request, tmp_path):
    """An empty database (no migration applied) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.sqlite3'}"
        return
    cluster = request.getfixturevalue("pg_cluster")
    name = cluster.create_database()
    yield cluster.url(name)
    cluster.drop_database(name)


T0 = "2026-01-01 00:00:00"


def _insert_0007_rows(db) -> dict[str, str]:
    """Rows as version 0007 wrote them (plaintext), with SQL: an account owning a bit of everything, a waiting-list
    entry and an invitation linked to it, and an unlinked entry, invitation and queued email."""
    p = db.param
    i = {k: ids.new_id() for k in ("acc", "entry", "free_entry", "inv", "free_inv", "ticket", "msg", "model", "photo")}
    i |= {k: ids.new_id() for k in ("job", "version", "mail", "free_mail")}

    def ins(table: str, **values):
        cols = ", ".join(f'"{c}"' for c in values)
        db.execute_sql(
            f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join([p] * len(values))})', tuple(values.values())
        )

    with db.atomic():
        ins("account", id=i["acc"], email="old@example.com", email_hmac="h-old", name="Old Name", role="user",
            state="active", is_16_or_older=True, free_trial_granted=False, created_at=T0, updated_at=T0)  # fmt: skip
        ins("waitlist_entry", id=i["entry"], email="old@example.com", email_hmac="h-old", name="Old Name",
            note="old note", is_16_or_older=True, state="approved", created_at=T0, account_id=i["acc"])  # fmt: skip
        ins("waitlist_entry", id=i["free_entry"], email="wait@example.com", email_hmac="h-wait", name="Wait Name",
            note="", is_16_or_older=True, state="pending", created_at=T0)  # fmt: skip
        ins("invitation", id=i["inv"], token_hash="t1", inviter_id=i["acc"], email="old@example.com",
            email_hmac="h-old", name="Old Name", created_at=T0, expires_at=T0, account_id=i["acc"])  # fmt: skip
        ins("invitation", id=i["free_inv"], token_hash="t2", inviter_id=i["acc"], email="guest@example.com",
            email_hmac="h-guest", name="Guest Name", created_at=T0, expires_at=T0)  # fmt: skip
        ins("ticket", id=i["ticket"], account_id=i["acc"], subject="old subject", state="open", created_at=T0,
            updated_at=T0)  # fmt: skip
        ins("ticket_message", id=i["msg"], ticket_id=i["ticket"], seq=0, author="user", body="old body",
            created_at=T0)  # fmt: skip
        ins("email_queue", id=i["mail"], account_id=i["acc"], kind="reactivated", to_address="old@example.com",
            subject="old mail", body="old mail body", created_at=T0, next_attempt_at=T0, attempts=0)  # fmt: skip
        ins("email_queue", id=i["free_mail"], kind="waitlist_approved", to_address="wait@example.com",
            subject="free mail", body="free mail body", created_at=T0, next_attempt_at=T0, attempts=0)  # fmt: skip
        ins("user_model", id=i["model"], account_id=i["acc"], display_name="Old Model", state="ready", progress=1.0,
            trigger_token="sks", current_version=1, created_at=T0, updated_at=T0)  # fmt: skip
        ins("photo", id=i["photo"], account_id=i["acc"], blob_id=ids.new_id(), width=8, height=8, size_bytes=1,
            created_at=T0, model_id=i["model"])  # fmt: skip
        ins("training_job", id=i["job"], model_id=i["model"], kind="train", state="succeeded", attempts=1,
            max_attempts=3, next_attempt_at=T0, progress=1.0, created_at=T0, updated_at=T0)  # fmt: skip
        ins("model_version", id=i["version"], model_id=i["model"], version=1, job_id=i["job"],
            adapter_blob_id=ids.new_id(), metadata_blob_id=ids.new_id(), base_fingerprint="0" * 64,
            created_at=T0)  # fmt: skip
    return i


PLAINTEXTS = ["old@example.com", "Old Name", "old note", "wait@example.com", "Wait Name", "guest@example.com",
              "Guest Name", "old subject", "old body", "old mail", "free mail", "Old Model"]  # fmt: skip


def _columns(db, table: str) -> set[str]:
    return {c.name for c in db.get_columns(table)}


def test_migration_0008_seals_the_rows_of_0007_once_in_one_transaction(empty_database_url, tmp_path):
    db = open_database(empty_database_url)
    runner(db).up(target="0007_invitation_revoked")
    i = _insert_0007_rows(db)
    name = "0008_sealed_personal_data"

    # Rows to seal and no keyring: a clear error, and the database is as 0007 left it (the DDL rolled back).
    installed = keyring._keyring
    keyring.initialize(None)
    try:
        with pytest.raises(RuntimeError, match="install the keyring"):
            migrate(db)
    finally:
        keyring.initialize(installed)
    assert pending(db)[:1] == [name] and "key_id" not in _columns(db, "account")
    # A keyring whose KEK does not exist fails at the first key: still 0007, every value still the plaintext.
    broken = Keyring(LocalKek(tmp_path / "no-kek"), SqliteKeyStore(tmp_path / "ks.sqlite3"))
    keyring.initialize(broken)
    try:
        with pytest.raises(Exception) as failed:
            migrate(db)
        assert not isinstance(failed.value, AssertionError)
    finally:
        keyring.initialize(installed)
    assert pending(db)[:1] == [name] and "key_id" not in _columns(db, "photo")
    assert db.execute_sql('SELECT "email" FROM "account"').fetchone()[0] == "old@example.com"

    assert migrate(db)[:1] == [name]
    assert not diff_models(db, m.ALL_MODELS)
    assert assert_all_sealed(db, PLAINTEXTS) == 21
    acc = m.Account.get_by_id(i["acc"])
    assert (acc.email, acc.name) == ("old@example.com", "Old Name")
    key = acc.key_id
    assert keyring.exists(key)
    for model, row_id in [
        (m.WaitlistEntry, "entry"),
        (m.Invitation, "inv"),
        (m.Ticket, "ticket"),
        (m.TicketMessage, "msg"),
        (m.EmailQueue, "mail"),
        (m.UserModel, "model"),
        (m.Photo, "photo"),
        (m.ModelVersion, "version"),
    ]:
        assert model.get_by_id(i[row_id]).key_id == key, model
    own = {m.WaitlistEntry.get_by_id(i["free_entry"]).key_id, m.Invitation.get_by_id(i["free_inv"]).key_id}
    own.add(m.EmailQueue.get_by_id(i["free_mail"]).key_id)
    assert len(own) == 3 and key not in own and all(keyring.exists(k) for k in own)
    entry = m.WaitlistEntry.get_by_id(i["entry"])
    assert (entry.email, entry.name, entry.note) == ("old@example.com", "Old Name", "old note")
    assert m.WaitlistEntry.get_by_id(i["free_entry"]).note == ""
    assert m.Invitation.get_by_id(i["free_inv"]).name == "Guest Name"
    assert (m.Ticket.get_by_id(i["ticket"]).subject, m.TicketMessage.get_by_id(i["msg"]).body) == (
        "old subject",
        "old body",
    )
    mail = m.EmailQueue.get_by_id(i["free_mail"])
    assert (mail.to_address, mail.subject, mail.body) == ("wait@example.com", "free mail", "free mail body")
    assert m.UserModel.get_by_id(i["model"]).display_name == "Old Model"
    # The email unique is on the HMAC now.
    assert any(ix.unique and ix.columns == ["email_hmac"] for ix in db.get_indexes("account"))

    # Run again: nothing to do, nothing changes.
    before = {(t, c): raw_values(db, t, c) for t, cs in SEALED_COLUMNS.items() for c in cs}
    assert migrate(db) == []
    assert before == {(t, c): raw_values(db, t, c) for t, cs in SEALED_COLUMNS.items() for c in cs}
    # New rows written through the models after the migration are sealed too.
    now = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    with write_transaction(db):
        m.Ticket.create(
            id=ids.new_id(), account=i["acc"], key_id=key, subject="new subject", created_at=now, updated_at=now
        )
    assert assert_all_sealed(db, [*PLAINTEXTS, "new subject"]) == 22
    close_database(db)


KILLED_MIGRATION = """
import os, sys
from pathlib import Path
from faceharmony.core.db.connection import open_database
from faceharmony.core.db.migrate import migrate
from faceharmony.core.keys.kek import LocalKek
from faceharmony.core.keys.keyring import Keyring, keyring
from faceharmony.core.keys.store import SqliteKeyStore

folder = Path(sys.argv[2])
kr = Keyring(LocalKek(folder / "kek"), SqliteKeyStore(folder / "keystore.sqlite3"))
kr.check(create=True)
real, calls = kr.seal_text, []

def seal_text(*args):
    calls.append(1)
    if len(calls) == 5:  # some values sealed and written, in the migration's open transaction
        print("paused", flush=True)
        sys.stdin.read()  # never answered: the process waits here for its SIGKILL
        os._exit(3)
    return real(*args)

kr.seal_text = seal_text
keyring.initialize(kr)
migrate(open_database(sys.argv[1]))
"""


def test_migration_0008_killed_halfway_leaves_0007(empty_database_url, tmp_path):
    import subprocess
    import sys

    db = open_database(empty_database_url)
    runner(db).up(target="0007_invitation_revoked")
    _insert_0007_rows(db)
    db.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MIGRATION, empty_database_url, str(tmp_path / "killed-keys")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline().strip() == b"paused"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    db = open_database(empty_database_url)
    assert pending(db)[:1] == ["0008_sealed_personal_data"]
    assert "key_id" not in _columns(db, "account")
    assert sorted(v for (v,) in db.execute_sql('SELECT "name" FROM "account"').fetchall()) == ["Old Name"]
    assert migrate(db)[:1] == ["0008_sealed_personal_data"]
    assert assert_all_sealed(db, PLAINTEXTS) == 21
    close_database(db)


def test_migration_0008_seals_exactly_the_personal_columns_of_the_models():
    import importlib.util

    spec = importlib.util.spec_from_file_location("m0008", MIGRATIONS_DIR / "0008_sealed_personal_data.py")
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert {t: tuple(sorted(c)) for t, c in migration.SEALED.items()} == {
        t: tuple(sorted(c)) for t, c in SEALED_COLUMNS.items()
    }


def test_an_update_query_that_would_write_plaintext_into_a_sealed_column_raises(harness):
    """`Model.update(name=...)` reaches the sealed column by its name: it must raise, not store the plaintext."""
    user = harness.sign_up("no-plain-update@example.com", "Sealed Only")

    def plain_update():
        m.Account.update(name="Plain Name").where(m.Account.id == user.account_id).execute()

    with pytest.raises(TypeError, match="sealed bytes only"):
        harness.db_call(plain_update)
    assert harness.db_call(lambda: m.Account.get_by_id(user.account_id).name) == "Sealed Only"
