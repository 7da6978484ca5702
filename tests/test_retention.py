"""The retention policies on both backends (P5, P11, P13, P16-P19): one second before each deadline nothing goes and
restore still works; one second after, nothing of it is left in the database or the blob store. Also: the account
purge provably covers the schema, a purge killed half-way finishes on the next run, two daemons do not conflict, and
one failing item does not hold back the others."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt

import grpc
import peewee as pw
import pytest

from faceharmony.core import ids
from faceharmony.core.blobstore.base import KINDS, Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.keys.keyring import keyring
from faceharmony.retention import policies
from faceharmony.retention.daemon import Retention
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import admin_pb2 as ad
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import photo_pb2 as p
from faceharmony.v1 import purchase_pb2 as pu
from faceharmony.v1 import support_pb2 as s
from tests.support import images
from tests.support.harness import status_of

DAY = dt.timedelta(days=1)
SECOND = dt.timedelta(seconds=1)


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def retention(h, **overrides) -> Retention:
    settings = dataclasses.replace(h.settings, **overrides) if overrides else h.settings
    return Retention(settings, h.db, LocalBlobStore(h.settings.blob_dir, Role.RETENTION), clock=h.clock)


def run(h, **overrides) -> dict[str, int]:
    return h.db_call(retention(h, **overrides).run_once)


def blobs(h) -> set[str]:
    store = LocalBlobStore(h.settings.blob_dir, Role.RETENTION)
    return {info.blob_id for kind in KINDS for info in store.list(kind)}


def upload(h, user, n=4) -> list[str]:
    payload = images.one_face()
    return [h.photos.UploadPhoto(p.UploadPhotoRequest(content=payload), metadata=user.md).photo.id for _ in range(n)]


def ready_model(h, user, photo_ids) -> str:
    """A model made through the API, then finished as a trainer would: a version with adapter and metadata blobs."""
    model = h.models.CreateModel(mp.CreateModelRequest(display_name="Me", photo_ids=photo_ids), metadata=user.md).model
    trainer = LocalBlobStore(h.settings.blob_dir, Role.TRAINER)
    key_id = keyring.new_key()  # the version's own key, as the trainer makes it
    adapter, metadata = (
        trainer.create("models", b"adapter", key_id=key_id),
        trainer.create("models", b"{}", key_id=key_id),
    )

    def finish():
        now = h.clock.now()
        with write_transaction(h.db):
            job = m.TrainingJob.get(m.TrainingJob.model == model.id)
            m.TrainingJob.update(state="succeeded", finished_at=now, progress=1.0).where(
                m.TrainingJob.id == job.id
            ).execute()
            m.ModelVersion.create(
                id=ids.new_id(),
                model=model.id,
                version=1,
                job=job.id,
                adapter_blob_id=adapter,
                metadata_blob_id=metadata,
                base_fingerprint="f" * 64,
                created_at=now,
                key_id=key_id,
            )
            m.UserModel.update(state="ready", current_version=1, progress=1.0).where(
                m.UserModel.id == model.id
            ).execute()

    h.db_call(finish)
    return model.id


def order_with_photos(h, user, model_id, states=("rejected", "downloaded")) -> tuple[str, list[str]]:
    """An order whose images were generated, as the order worker would leave it; returns (order id, photo ids)."""
    worker = LocalBlobStore(h.settings.blob_dir, Role.ORDER)
    key_id = h.db_call(lambda: m.Account.get_by_id(user.account_id).key_id)
    photo_keys = [keyring.new_key() for _ in states]  # each generated photo's own key, as the worker makes it
    made = [
        (worker.create("generated", b"png", key_id=k), worker.create("generated", b"jpg", key_id=k)) for k in photo_keys
    ]

    def insert():
        now = h.clock.now()
        order_id = ids.new_id()
        photo_ids = []
        with write_transaction(h.db):
            m.Order.create(
                id=order_id,
                account=user.account_id,
                key_id=key_id,
                style_id="studio",
                count=len(states),
                state="completed",
                images_total=len(states),
                images_done=len(states),
                credits_charged=len(states),
                max_attempts=5,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
                finished_at=now,
            )
            for i, (state, (blob, preview), photo_key) in enumerate(zip(states, made, photo_keys)):
                image = m.OrderImage.create(
                    id=ids.new_id(),
                    order=order_id,
                    position=i,
                    model_id=model_id,
                    model_version=1,
                    seed=i,
                    state="done",
                    updated_at=now,
                )
                rejected = state == "rejected"
                photo = m.GeneratedPhoto.create(
                    id=ids.new_id(),
                    account=user.account_id,
                    key_id=photo_key,
                    order=order_id,
                    image=image.id,
                    model_id=model_id,
                    blob_id=blob,
                    preview_blob_id=preview,
                    content_type="image/png",
                    size_bytes=3,
                    width=8,
                    height=8,
                    state=state,
                    created_at=now,
                    download_time=now if state == "downloaded" else None,
                    reject_time=now if rejected else None,
                    purge_after=now + dt.timedelta(days=h.settings.rejected_photo_days) if rejected else None,
                )
                photo_ids.append(photo.id)
        return order_id, photo_ids

    return h.db_call(insert)


def traces(h, needles: set[str]) -> list[tuple[str, str]]:
    """Every (table, column) whose value contains one of the needles, in every table of the schema."""

    def scan():
        found = []
        for model in m.ALL_MODELS:
            for row in model.select().dicts():
                for column, value in row.items():
                    text = str(value)
                    if any(n in text for n in needles):
                        found.append((model._meta.table_name, column))
        return found

    return h.db_call(scan)


# --- completeness: reflection over the schema -----------------------------------------------------

# Tables deliberately outside the account purge, and why.
NOT_PURGED = {
    m.KnownEmail: "the email's HMAC survives the purge by design (P5)",
    m.ModelEviction: "a model version's random id stays until every Triton replica dropped it from its cache (core/jobs/evictions.py)",
}
# Columns that can hold a person's data or an account's id without a foreign key.
TRACE_COLUMNS = {"email", "email_hmac", "to_address", "name", "key", "actor_id", "subject_id", "model_id"}


def _reaches_account(model: type[m.BaseModel], seen=()) -> bool:
    if model is m.Account:
        return True
    return any(
        isinstance(f, pw.ForeignKeyField) and f.rel_model not in seen and _reaches_account(f.rel_model, (*seen, model))
        for f in model._meta.sorted_fields
    )


def test_the_account_purge_covers_every_table_that_can_hold_a_trace_of_an_account():
    account = m.Account(id=ids.new_id(), email="x@example.com", email_hmac="h" * 64)
    deleted = {table for table, _ in policies.account_rows(account)}
    nulled = {field for field, _ in policies.account_links(account.id)}
    for model in m.ALL_MODELS:
        holds_trace = _reaches_account(model) or TRACE_COLUMNS & set(model._meta.fields)
        if not holds_trace:
            continue
        assert model in deleted or model in NOT_PURGED, f"{model._meta.table_name} is not covered by the account purge"
        # a nullable reference from another person's row is set to NULL, never left dangling
        for f in model._meta.sorted_fields:
            if isinstance(f, pw.ForeignKeyField) and f.rel_model is m.Account and f.null and f.on_delete == "SET NULL":
                assert f in nulled, f"{model._meta.table_name}.{f.name} is not unlinked by the account purge"
    assert m.KnownEmail not in deleted
    # children before parents: no foreign key is left pointing at a deleted row
    order = [table for table, _ in policies.account_rows(account)]
    for i, table in enumerate(order):
        for f in table._meta.sorted_fields:
            if isinstance(f, pw.ForeignKeyField) and f.rel_model in order and f.rel_model is not table:
                assert order.index(f.rel_model) > i or f in nulled, (
                    f"{table._meta.table_name} deleted after {f.rel_model._meta.table_name}"
                )


# --- P5, P17, P18, P19: the account -------------------------------------------------------------------


def test_the_acceptance_story(harness):
    h = harness
    user = h.sign_up("story@example.com", "Story Person")
    photo_ids = upload(h, user, 4)
    model_id = ready_model(h, user, photo_ids)
    order_id, generated = order_with_photos(h, user, model_id)
    h.db_call(
        lambda: (
            m.GeneratedPhoto.update(purge_after=h.clock.now() + 60 * DAY)
            .where(m.GeneratedPhoto.id == generated[0])
            .execute()
        )
    )
    h.buy(user)
    ticket = h.support.CreateTicket(
        s.CreateTicketRequest(subject="Help", body="Hello", request_id="t-1"), metadata=user.md
    ).ticket
    staff = h.staff("support")
    h.support.ReplyToTicket(s.ReplyToTicketRequest(id=ticket.id, body="Hi"), metadata=staff.md)
    h.accounts.InviteFriend(a.InviteFriendRequest(email="friend-of-story@example.com", name="Friend"), metadata=user.md)
    entry_id = h.db_call(lambda: m.WaitlistEntry.get(m.WaitlistEntry.account == user.account_id).id)
    my_blobs = blobs(h)
    assert len(my_blobs) == 4 + 2 + 4  # photos, adapter + metadata, two generated photos with previews

    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    h.clock.advance(29 * DAY)
    assert run(h)["accounts"] == 0
    assert blobs(h) == my_blobs
    signed = h.accounts.SignIn(a.SignInRequest(email=user.email, code=h.code_for(user.email)))
    md = bearer(signed.session_token)
    h.accounts.ReactivateAccount(a.ReactivateAccountRequest(), metadata=md)
    assert [x.id for x in h.models.ListModels(mp.ListModelsRequest(), metadata=md).models] == [model_id]
    assert len(h.purchases.ListPurchases(pu.ListPurchasesRequest(), metadata=md).purchases) == 1
    assert len(h.photos.ListPhotos(p.ListPhotosRequest(), metadata=md).photos) == 4

    deleted = h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=md).account
    purge_after = deleted.purge_after.ToDatetime(tzinfo=dt.UTC)
    h.clock.set(purge_after - SECOND)
    run(h)
    assert blobs(h) == my_blobs and h.db_call(m.Account.get_by_id, user.account_id).state == "deactivated"
    h.clock.advance(2 * SECOND)
    purged = run(h)
    assert purged["accounts"] == 1
    assert blobs(h) & my_blobs == set()
    hmac = h.api.app.hasher.email(user.email)
    needles = {
        user.account_id,
        user.email,
        "Story Person",
        model_id,
        order_id,
        ticket.id,
        *photo_ids,
        *generated,
        *my_blobs,
        hmac,
    }
    needles |= {"friend-of-story@example.com", "tx-story", entry_id}
    # No order worker runs here, so the eviction of the model's adapter from Triton's cache, requested by the
    # purge, is still pending: its record (the model's random id and version, nothing else) outlives the rows.
    assert sorted(traces(h, needles)) == [("known_email", "email_hmac"), ("model_eviction", "model_id")]
    assert h.db_call(
        lambda: list(m.ModelEviction.select(m.ModelEviction.model_id, m.ModelEviction.version).tuples())
    ) == [(model_id, 1)]
    events = h.db_call(lambda: list(m.AuditEvent.select().where(m.AuditEvent.kind == "ACCOUNT_PURGED").dicts()))
    assert len(events) == 1 and events[0]["actor_id"] is None and events[0]["subject_id"] is None
    assert int(events[0]["details"]["photo"]) == 4 and int(events[0]["details"]["blobs"]) == len(my_blobs)

    again = h.sign_up("story@example.com", "Story Again")
    balance = h.purchases.GetBalance(pu.GetBalanceRequest(), metadata=again.md)
    assert not balance.free_trial_granted and balance.credits == 0


def test_a_purged_staff_members_actions_on_others_stay_tombstoned_their_own_events_go(harness):
    """P20: a support agent who deletes their account does not erase the record of what they did to others."""
    h = harness
    agent = h.staff("support")
    user = h.sign_up("helped@example.com", approver=agent)  # WAITLIST_APPROVED by the agent
    entry_id = h.db_call(lambda: m.WaitlistEntry.get(m.WaitlistEntry.account == user.account_id).id)
    ticket = h.support.CreateTicket(
        s.CreateTicketRequest(subject="Help", body="Hello", request_id="t-u"), metadata=user.md
    ).ticket
    h.support.ReplyToTicket(s.ReplyToTicketRequest(id=ticket.id, body="Hi"), metadata=agent.md)
    model_id = ready_model(h, user, upload(h, user, 4))
    h.models.DeleteModel(mp.DeleteModelRequest(id=model_id), metadata=user.md)
    h.admin.RestoreModel(ad.RestoreModelRequest(id=model_id), metadata=agent.md)
    own = h.support.CreateTicket(
        s.CreateTicketRequest(subject="Mine", body="Me", request_id="t-a"), metadata=agent.md
    ).ticket
    h.support.ReplyToTicket(
        s.ReplyToTicketRequest(id=own.id, body="Myself"), metadata=agent.md
    )  # about their own ticket

    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=agent.email), metadata=agent.md)
    h.clock.advance(31 * DAY)
    assert run(h)["accounts"] == 1

    kept = h.db_call(
        lambda: {
            (e.kind, e.subject_id): e.actor_id
            for e in m.AuditEvent.select().where(
                m.AuditEvent.kind.in_(["WAITLIST_APPROVED", "TICKET_REPLIED", "MODEL_RESTORED"])
            )
        }
    )
    assert kept == {
        ("WAITLIST_APPROVED", entry_id): "purged-staff",
        ("TICKET_REPLIED", ticket.id): "purged-staff",
        ("MODEL_RESTORED", model_id): "purged-staff",
    }  # the reply to their own ticket went with the agent's own record
    assert traces(h, {agent.account_id, agent.email, agent.name, own.id}) == []
    purged = h.db_call(lambda: m.AuditEvent.get(m.AuditEvent.kind == "ACCOUNT_PURGED"))
    assert purged.actor_id is None and purged.subject_id is None and purged.details["staff_actions_kept"] == "3"
    # the user's own purge later takes the events about their things, the tombstoned ones included
    md = bearer(h.accounts.SignIn(a.SignInRequest(email=user.email, code=h.code_for(user.email))).session_token)
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=md)
    h.clock.advance(31 * DAY)
    assert run(h)["accounts"] == 1
    assert traces(h, {"purged-staff", entry_id, ticket.id}) == []
    assert traces(h, {model_id}) == [
        ("model_eviction", "model_id")
    ]  # its adapter's pending eviction (no order worker here)


def test_evictions_triton_has_not_confirmed_are_reported_with_their_keys(harness, caplog):
    """What the operator sees when a Triton replica stays away (no order worker runs here): the pending evictions
    in the metrics, and those older than evictions.OVERDUE_AFTER in an error log with their model keys."""
    from faceharmony.core.jobs import evictions

    h = harness
    user = h.sign_up("unconfirmed@example.com")
    model_id = ready_model(h, user, upload(h, user, 4))
    h.models.DeleteModel(mp.DeleteModelRequest(id=model_id), metadata=user.md)
    daemon = retention(h)
    h.db_call(daemon.run_once)
    assert (daemon.metrics.get("evictions_pending"), daemon.metrics.get("evictions_overdue")) == (1, 0)
    h.clock.advance(evictions.OVERDUE_AFTER + SECOND)
    with caplog.at_level("ERROR"):
        h.db_call(daemon.run_once)
    assert (daemon.metrics.get("evictions_pending"), daemon.metrics.get("evictions_overdue")) == (1, 1)
    assert daemon.metrics.get("eviction_oldest_age_seconds") == (evictions.OVERDUE_AFTER + SECOND).total_seconds()
    (record,) = [r for r in caplog.records if "not confirmed by every Triton replica" in r.getMessage()]
    assert record.keys == f"{model_id}:1"
    # support restores the model: servable again, nothing left to evict
    h.admin.RestoreModel(ad.RestoreModelRequest(id=model_id), metadata=h.staff("support").md)
    h.db_call(daemon.run_once)
    assert daemon.metrics.get("evictions_pending") == 0


def test_a_purging_account_can_neither_sign_in_nor_be_reactivated(harness):
    h = harness
    user = h.sign_up("marked@example.com")
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    h.clock.advance(10 * DAY)
    signed = h.accounts.SignIn(a.SignInRequest(email=user.email, code=h.code_for(user.email)))
    code = h.code_for(user.email)
    ctx = retention(h).context(h.clock.now() + 21 * DAY)  # a daemon whose clock runs ahead marks it
    assert h.db_call(policies.claim_accounts, ctx) == [user.account_id]
    md = bearer(signed.session_token)
    assert (
        status_of(h.accounts.ReactivateAccount, a.ReactivateAccountRequest(), metadata=md)[0]
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert status_of(h.accounts.SignIn, a.SignInRequest(email=user.email, code=code)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "GRACE_PERIOD_OVER",
    )


# --- P13: models ----------------------------------------------------------------------------------


def test_a_deleted_model_is_restorable_until_its_deadline_then_purged_with_photos_and_adapter(harness):
    h = harness
    user = h.sign_up("model-purge@example.com")
    photo_ids = upload(h, user, 4)
    model_id = ready_model(h, user, photo_ids)
    order_id, generated = order_with_photos(h, user, model_id, states=("downloaded",))
    before = blobs(h)
    staff = h.staff("support")
    h.models.DeleteModel(mp.DeleteModelRequest(id=model_id), metadata=user.md)
    h.clock.advance(h.settings.model_grace_days * DAY - SECOND)
    run(h)
    assert blobs(h) == before
    h.admin.RestoreModel(ad.RestoreModelRequest(id=model_id), metadata=staff.md)
    h.models.DeleteModel(mp.DeleteModelRequest(id=model_id), metadata=user.md)
    deadline = h.clock.now() + h.settings.model_grace_days * DAY
    h.clock.set(deadline - SECOND)
    assert run(h)["models"] == 0
    h.clock.set(deadline + SECOND)
    assert run(h)["models"] == 1
    staff = h.staff("support")
    assert (
        status_of(h.admin.RestoreModel, ad.RestoreModelRequest(id=model_id), metadata=staff.md)[0]
        == grpc.StatusCode.NOT_FOUND
    )
    left = blobs(h)
    assert len(before - left) == 4 + 2  # the photos and the adapter + metadata...
    assert len(left & before) == 2  # ...but the user's generated photo and its preview stay (P15)
    assert traces(h, {*photo_ids}) == []
    assert h.db_call(
        lambda: (m.UserModel.select().count(), m.ModelVersion.select().count(), m.TrainingJob.select().count())
    ) == (0, 0, 0)
    assert h.db_call(m.GeneratedPhoto.select().count) == 1 and h.db_call(m.Order.get_by_id, order_id)
    kinds = h.db_call(lambda: [e.kind for e in m.AuditEvent.select().where(m.AuditEvent.subject_id == model_id)])
    assert "MODEL_PURGED" in kinds


# --- P11: photos ----------------------------------------------------------------------------------


def test_unattached_photos_expire_and_deleted_photos_go(harness):
    h = harness
    user = h.sign_up("photo-purge@example.com")
    keep, deleted = upload(h, user, 2)
    h.photos.DeletePhoto(p.DeletePhotoRequest(id=deleted), metadata=user.md)
    h.clock.advance(SECOND)
    assert run(h)["photos"] == 1
    assert len(blobs(h)) == 1 and traces(h, {deleted}) == []
    h.clock.advance(h.settings.unattached_photo_ttl_hours * dt.timedelta(hours=1) - 2 * SECOND)
    assert run(h)["photos"] == 0 and len(blobs(h)) == 1
    assert [x.id for x in h.photos.ListPhotos(p.ListPhotosRequest(), metadata=user.md).photos] == [keep]
    h.clock.advance(2 * SECOND)
    assert run(h)["photos"] == 1
    assert blobs(h) == set() and traces(h, {keep}) == []


def test_the_operator_option_purges_photos_once_training_succeeds(harness):
    h = harness
    user = h.sign_up("p11@example.com")
    photo_ids = upload(h, user, 4)
    run(h)
    assert len(blobs(h)) == 4  # kept while the model exists (the default)
    ready_model(h, user, photo_ids)
    assert len(blobs(h)) == 6
    run(h)
    assert len(blobs(h)) == 6
    h.clock.advance(SECOND)
    assert run(h, purge_photos_after_training=True)["photos"] == 4
    assert len(blobs(h)) == 2 and traces(h, set(photo_ids)) == []


# --- P16: rejected generated photos ---------------------------------------------------------------


def test_a_rejected_generated_photo_goes_60_days_after_rejection_a_downloaded_one_stays(harness):
    h = harness
    user = h.sign_up("p16@example.com")
    model_id = ready_model(h, user, upload(h, user, 4))
    _, (rejected, downloaded) = order_with_photos(h, user, model_id)
    before = blobs(h)
    h.clock.advance(h.settings.rejected_photo_days * DAY - SECOND)
    assert run(h)["generated_photos"] == 0 and blobs(h) == before
    h.clock.advance(2 * SECOND)
    assert run(h)["generated_photos"] == 1
    assert len(before - blobs(h)) == 2
    assert traces(h, {rejected}) == [] and traces(h, {downloaded})
    h.clock.advance(3650 * DAY)
    assert run(h)["generated_photos"] == 0 and traces(h, {downloaded})


# --- codes, sessions, invitations, rate limits ----------------------------------------------------


def test_expired_codes_sessions_and_invitations_go(harness):
    h = harness
    user = h.sign_up("house@example.com")
    h.accounts.InviteFriend(a.InviteFriendRequest(email="never-accepts@example.com", name="Friend"), metadata=user.md)

    def counts():
        return h.db_call(
            lambda: {
                "codes": m.SignInCode.select().count(),
                "sessions": m.Session.select().where(m.Session.account == user.account_id).count(),
                "invitations": m.Invitation.select().count(),
                "hits": m.RateLimitHit.select().count(),
            }
        )

    start = counts()
    assert start["codes"] and start["sessions"] and start["invitations"] and start["hits"]
    h.clock.advance(seconds=h.settings.code_ttl_seconds - 1)
    run(h)
    assert counts()["codes"] == start["codes"]
    h.clock.advance(DAY)
    purged = run(h)
    assert purged["sign_in_codes"] >= 1 and purged["rate_limit_hits"] >= 1
    assert counts()["codes"] == 0 and counts()["hits"] == 0 and counts()["sessions"] == start["sessions"]
    h.clock.advance(seconds=h.settings.invitation_ttl_seconds)
    assert run(h)["invitations"] == 1
    h.clock.advance(seconds=h.settings.session_ttl_seconds)
    run(h)
    assert counts() == {"codes": 0, "sessions": 0, "invitations": 0, "hits": 0}


# --- crash safety and concurrency ------------------------------------------------------------------


def _deleted_account_with_everything(h, address):
    user = h.sign_up(address, "Crash Person")
    photo_ids = upload(h, user, 4)
    model_id = ready_model(h, user, photo_ids)
    order_with_photos(h, user, model_id)
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    return user


class Killed(Exception):
    """Stands for the process dying at that point."""


@pytest.mark.parametrize("failing", ["account_rows", "delete_blobs"])
def test_a_purge_killed_half_way_finishes_on_the_next_run(harness, monkeypatch, failing):
    h = harness
    user = _deleted_account_with_everything(h, "crash@example.com")
    h.clock.advance((h.settings.account_grace_days + 1) * DAY)
    real = getattr(policies, failing)
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if failing == "delete_blobs" and len(calls) == 1:
            real(args[0], list(args[1])[:3])  # dies after deleting some blobs
        raise Killed("killed")

    monkeypatch.setattr(policies, failing, crash)
    with pytest.raises(Killed):
        h.db_call(
            policies.purge_account,
            retention(h).context(),
            h.db_call(policies.claim_accounts, retention(h).context())[0],
        )
    assert h.db_call(m.Account.get_by_id, user.account_id).state == "purging"
    monkeypatch.setattr(policies, failing, real)
    assert run(h)["accounts"] == 1
    assert blobs(h) == set()
    assert traces(h, {user.account_id, user.email, "Crash Person"}) == []


def test_two_daemons_at_once_purge_everything_once(harness):
    h = harness
    users = [_deleted_account_with_everything(h, f"twin-{i}@example.com") for i in range(3)]
    h.clock.advance((h.settings.account_grace_days + 1) * DAY)
    first, second = retention(h), retention(h)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(h.db_call, r.run_once) for r in (first, second)]]
    assert results[0]["accounts"] + results[1]["accounts"] == 3
    assert first.metrics.total("errors_total") == second.metrics.total("errors_total") == 0
    assert blobs(h) == set()
    assert traces(h, {x.account_id for x in users} | {x.email for x in users}) == []
    assert h.db_call(m.AuditEvent.select().where(m.AuditEvent.kind == "ACCOUNT_PURGED").count) == 3


# --- one failing item does not block the others ----------------------------------------------------


def test_an_account_whose_purge_fails_does_not_stop_the_next_one(harness, monkeypatch):
    h = harness
    stuck = _deleted_account_with_everything(h, "stuck@example.com")
    h.clock.advance(SECOND)
    other = _deleted_account_with_everything(h, "other@example.com")
    h.clock.advance((h.settings.account_grace_days + 1) * DAY)
    real = policies.purge_account

    def purge(ctx, account_id):
        if account_id == stuck.account_id:
            raise Killed("this account's purge fails")
        return real(ctx, account_id)

    monkeypatch.setattr(policies, "purge_account", purge)
    daemon = retention(h)
    assert h.db_call(daemon.run_once)["accounts"] == 1
    assert daemon.metrics.get("errors_total", "accounts") == 1  # tried once this cycle, not once per batch
    assert h.db_call(m.Account.get_or_none, m.Account.id == other.account_id) is None
    assert h.db_call(m.Account.get_by_id, stuck.account_id).state == "purging"
    monkeypatch.setattr(policies, "purge_account", real)
    assert run(h)["accounts"] == 1  # retried next cycle
    assert blobs(h) == set()


def test_a_photo_whose_blob_cannot_be_deleted_stays_for_the_next_cycle_and_the_others_go(harness, monkeypatch):
    from faceharmony.core.blobstore.base import BlobError

    h = harness
    user = h.sign_up("blob-fails@example.com")
    photo_ids = upload(h, user, 3)
    for photo_id in photo_ids:  # oldest first: the failing one leads the first batch
        h.photos.DeletePhoto(p.DeletePhotoRequest(id=photo_id), metadata=user.md)
        h.clock.advance(SECOND)
    stuck_blob = h.db_call(lambda: m.Photo.get_by_id(photo_ids[0]).blob_id)
    h.clock.advance(SECOND)
    real = LocalBlobStore.delete

    def delete(store, kind, blob_id):
        if blob_id == stuck_blob:
            raise BlobError("the store failed")
        return real(store, kind, blob_id)

    monkeypatch.setattr(LocalBlobStore, "delete", delete)
    daemon = retention(h, retention_batch_size=2)
    purged = h.db_call(daemon.run_once)
    assert purged["photos"] == 2 and daemon.metrics.get("errors_total", "photos") == 1
    assert blobs(h) == {stuck_blob} and h.db_call(m.Photo.get_by_id, photo_ids[0])
    monkeypatch.setattr(LocalBlobStore, "delete", real)
    assert run(h)["photos"] == 1 and blobs(h) == set()


# --- rate limits, audit, the orphan sweep's interval --------------------------------------------------


def test_rate_limit_rows_are_kept_for_the_longest_window(harness):
    h = harness
    h.sign_up("window@example.com")
    hits = lambda: h.db_call(m.RateLimitHit.select().count)  # noqa: E731
    assert hits()
    h.clock.advance(DAY + SECOND)
    assert run(h, code_request_window_seconds=2 * 86400)["rate_limit_hits"] == 0  # still counted by a 2-day window
    assert policies.rate_limit_keep(h.settings) == DAY  # a 1-hour window: the invitations' day
    h.clock.advance(DAY)
    assert run(h, code_request_window_seconds=2 * 86400)["rate_limit_hits"] >= 1 and hits() == 0


def test_routine_cycles_write_no_retention_run_event(harness):
    h = harness
    user = h.sign_up("routine@example.com")
    h.clock.advance(seconds=h.settings.code_ttl_seconds + 1)
    assert run(h)["sign_in_codes"] >= 1

    def kinds():
        return h.db_call(lambda: [e.kind for e in m.AuditEvent.select().where(m.AuditEvent.kind == "RETENTION_RUN")])

    assert kinds() == []
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    h.clock.advance((h.settings.account_grace_days + 1) * DAY)
    assert run(h)["accounts"] == 1
    assert kinds() == ["RETENTION_RUN"]


def test_the_orphan_sweep_runs_on_its_own_interval(sqlite_harness):
    h = sqlite_harness
    api = LocalBlobStore(h.settings.blob_dir, Role.API)
    h.clock.set(dt.datetime.now(dt.UTC) + dt.timedelta(hours=h.settings.orphan_margin_hours, minutes=1))
    daemon = retention(h)
    assert h.db_call(daemon.run_once)["orphan_photos_blobs"] == 0  # the first cycle sweeps
    # An orphan: no row names it, nor its key (a fresh one each time: the key sweep shreds unreferenced keys).
    orphan = api.create("photos", b"orphan", key_id=keyring.new_key())  # older than the margin by the daemon's clock
    h.clock.advance(seconds=h.settings.orphan_sweep_interval_seconds - 1)
    assert "orphan_photos_blobs" not in h.db_call(daemon.run_once) and blobs(h) == {orphan}
    assert h.db_call(daemon.run_once, None, True)["orphan_photos_blobs"] == 1  # as `--once` does
    orphan = api.create("photos", b"orphan", key_id=keyring.new_key())
    h.clock.advance(seconds=h.settings.orphan_sweep_interval_seconds - 1)
    assert "orphan_photos_blobs" not in h.db_call(daemon.run_once)
    h.clock.advance(seconds=1)
    assert h.db_call(daemon.run_once)["orphan_photos_blobs"] == 1 and blobs(h) == set()


def test_a_purged_photo_model_or_generated_photo_takes_its_own_data_key_the_persons_stays(harness):
    """Each photo, model version and generated photo has a key of its own (issue 12): its purge shreds it, so a
    soft-deleted copy of its blob opens with nothing; the person's key stays while the account lives."""
    h = harness
    user = h.sign_up("own-keys@example.com")
    photo_ids = upload(h, user, 5)
    keys_of_photos = dict(h.db_call(lambda: list(m.Photo.select(m.Photo.id, m.Photo.key_id).tuples())))
    person = h.db_call(lambda: m.Account.get_by_id(user.account_id).key_id)
    assert len(set(keys_of_photos.values()) | {person}) == 6  # every photo a key of its own
    spare = photo_ids.pop()
    h.photos.DeletePhoto(p.DeletePhotoRequest(id=spare), metadata=user.md)
    model_id = ready_model(h, user, photo_ids)
    version_key = h.db_call(lambda: m.ModelVersion.get(m.ModelVersion.model == model_id).key_id)
    _, generated = order_with_photos(h, user, model_id, states=("rejected",))
    generated_key = h.db_call(lambda: m.GeneratedPhoto.get_by_id(generated[0]).key_id)
    assert run(h)["photos"] == 1
    assert not keyring.exists(keys_of_photos[spare])
    assert all(keyring.exists(keys_of_photos[pid]) for pid in photo_ids)

    h.models.DeleteModel(mp.DeleteModelRequest(id=model_id), metadata=user.md)
    h.clock.advance(61 * DAY)  # past the model's grace period and the rejected photo's 60 days
    purged = run(h)
    assert purged["models"] == 1 and purged["generated_photos"] == 1
    assert not keyring.exists(version_key) and not keyring.exists(generated_key)
    assert not any(keyring.exists(keys_of_photos[pid]) for pid in photo_ids)  # purged with the model (P13)
    assert keyring.exists(person)
    keyring.forget_cached()
    assert h.db_call(lambda: m.Account.get_by_id(user.account_id).email) == user.email


def test_a_purge_killed_before_its_shred_is_finished_by_the_key_sweep(harness):
    """The rows went but the daemon died before shredding (or a write made its key and never committed): the key
    sweep, run in a daemon's first cycle, shreds every key no row names once older than the orphan margin, and
    leaves alone a key made just now (its rows may be committing) and every key a row names."""
    from faceharmony.core.clock import ManualClock

    h = harness
    user = h.sign_up("sweep-keys@example.com")
    person = h.db_call(lambda: m.Account.get_by_id(user.account_id).key_id)
    orphan = keyring.new_key()  # as a killed purge leaves it: no row names it any more
    real_now = dt.datetime.now(dt.UTC)
    margin = dt.timedelta(hours=h.settings.orphan_margin_hours)

    def cycle(at: dt.datetime) -> dict[str, int]:
        daemon = Retention(h.settings, h.db, LocalBlobStore(h.settings.blob_dir, Role.RETENTION), clock=ManualClock(at))
        return h.db_call(daemon.run_once, h.clock.now(), True)

    assert cycle(real_now)["orphan_data_keys"] == 0 and keyring.exists(orphan)  # inside the margin: kept
    assert cycle(real_now + margin + dt.timedelta(minutes=1))["orphan_data_keys"] == 1
    assert not keyring.exists(orphan)
    assert keyring.exists(person)  # named by the account (and the staff's keys by theirs)
    keyring.forget_cached()
    assert h.db_call(lambda: m.Account.get_by_id(user.account_id).email) == user.email


def test_the_purge_takes_the_persons_queued_mail_whatever_key_sealed_it(harness):
    """A mail queued for the person under their waiting-list entry's key (the account took another key), and the
    invitation mail to a friend who never accepted (it names the inviter): both go with the account."""
    from faceharmony.core.email.queue import enqueue

    h = harness
    user = h.sign_up("queued-mail@example.com")
    entry_key = h.db_call(lambda: m.WaitlistEntry.get(m.WaitlistEntry.account == user.account_id).key_id)
    h.accounts.InviteFriend(a.InviteFriendRequest(email="never-accepts@example.com", name="Friend"), metadata=user.md)
    h.deliver_emails()  # the invitation itself sent (on a busy machine the delivery loop may not have run yet)
    other_key = keyring.new_key()
    invite_key = h.db_call(lambda: m.Invitation.get(m.Invitation.inviter == user.account_id).key_id)
    held = m.EmailQueue.key_id.in_([other_key, invite_key])

    def queue_mail():  # in one transaction, held back as a failing transport would: both wait past the purge
        with write_transaction(h.db):
            m.WaitlistEntry.update(key_id=other_key).where(m.WaitlistEntry.account == user.account_id).execute()
            enqueue(clock=h.clock, kind="reactivated", to=user.email, name="Q", key_id=other_key)
            enqueue(clock=h.clock, kind="reactivated", to="never-accepts@example.com", name="F", key_id=invite_key)
            m.EmailQueue.update(next_attempt_at=h.clock.now() + 365 * DAY).where(held).execute()
        return m.EmailQueue.select().where(held).count()

    assert entry_key and h.db_call(queue_mail) == 2
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    h.clock.advance(31 * DAY)
    assert h.db_call(lambda: m.EmailQueue.select().where(held).count()) == 2
    assert run(h)["accounts"] == 1
    left = h.db_call(lambda: list(m.EmailQueue.select(m.EmailQueue.key_id).tuples()))
    assert (other_key,) not in left and (invite_key,) not in left
    assert not keyring.exists(other_key) and not keyring.exists(invite_key)
