"""Accounts and passwordless sign-in (P1-P5, P17 except the purge, P20), on both database backends."""

from __future__ import annotations

import datetime as dt

import grpc
import peewee as pw
import pytest

from faceharmony.core.db import models as m
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import admin_pb2 as ad
from faceharmony.v1 import purchase_pb2 as p
from tests.support.harness import status_of

ALL_TABLES = m.ALL_MODELS


def row_counts(h) -> dict[str, int]:
    return h.db_call(lambda: {model.__name__: model.select().count() for model in ALL_TABLES})


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


# --- P1, P2: waiting list and invitations -------------------------------------------------


def test_join_waitlist_requires_attestation_and_stores_nothing_without_it(harness):
    before = row_counts(harness)
    code, reason = status_of(
        harness.accounts.JoinWaitlist, a.JoinWaitlistRequest(name="Kid", email="kid@example.com", is_16_or_older=False)
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "AGE_ATTESTATION_REQUIRED")
    assert row_counts(harness) == before


@pytest.mark.parametrize(
    "name,email,reason",
    [
        ("Ann", "", "INVALID_EMAIL"),
        ("Ann", "not-an-email", "INVALID_EMAIL"),
        ("Ann", "a@b", "INVALID_EMAIL"),
        ("Ann", "x" * 65 + "@example.com", "INVALID_EMAIL"),
        ("Ann", "a@" + "b" * 250 + ".com", "INVALID_EMAIL"),
        ("Ann", "a b@example.com", "INVALID_EMAIL"),
        ("Ann", "a..b@example.com", "INVALID_EMAIL"),
        ("", "ann@example.com", "INVALID_NAME"),
        ("   ", "ann@example.com", "INVALID_NAME"),
        ("A" * 101, "ann@example.com", "INVALID_NAME"),
        ("Ann\x00", "ann@example.com", "INVALID_NAME"),
        ("Ann\x1b[31m", "ann@example.com", "INVALID_NAME"),
    ],
)
def test_join_waitlist_rejects_bad_input(harness, name, email, reason):
    h = harness
    before = row_counts(h)
    code, got = status_of(h.accounts.JoinWaitlist, a.JoinWaitlistRequest(name=name, email=email, is_16_or_older=True))
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert row_counts(h) == before


def test_waitlist_join_is_idempotent_and_answers_the_same(harness):
    req = a.JoinWaitlistRequest(name="Cleo", email="Cleo@Example.com ", is_16_or_older=True, note="hi")
    harness.accounts.JoinWaitlist(req)
    harness.accounts.JoinWaitlist(req)
    admin = harness.staff("admin")
    entries = harness.admin.ListWaitlist(ad.ListWaitlistRequest(), metadata=admin.md).entries
    assert [(e.email, e.name, e.is_16_or_older, e.note) for e in entries] == [("cleo@example.com", "Cleo", True, "hi")]


def test_no_account_without_approval(harness):
    harness.accounts.JoinWaitlist(a.JoinWaitlistRequest(name="Dan", email="dan@example.com", is_16_or_older=True))
    harness.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email="dan@example.com"))
    assert [msg for msg in harness.new_emails() if msg["To"] == "dan@example.com"] == []
    code, reason = status_of(harness.accounts.SignIn, a.SignInRequest(email="dan@example.com", code="123456"))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CODE")
    assert (
        harness.db_call(m.Account.select().where(m.Account.email_hmac == harness.email_hmac("dan@example.com")).count)
        == 0
    )


def test_approval_email_greets_by_name_and_first_sign_in_creates_the_account(harness):
    harness.accounts.JoinWaitlist(
        a.JoinWaitlistRequest(name="Eve Example", email="eve@example.com", is_16_or_older=True)
    )
    admin = harness.staff("support")
    entry = harness.admin.ListWaitlist(
        ad.ListWaitlistRequest(state=ad.WAITLIST_ENTRY_STATE_PENDING), metadata=admin.md
    ).entries[0]
    approved = harness.admin.ApproveWaitlistEntry(ad.ApproveWaitlistEntryRequest(id=entry.id), metadata=admin.md).entry
    assert approved.state == ad.WAITLIST_ENTRY_STATE_APPROVED
    mail = harness.last_email_to("eve@example.com", "You're in")
    assert "Hi Eve Example," in mail.get_content()
    code, reason = status_of(
        harness.admin.ApproveWaitlistEntry, ad.ApproveWaitlistEntryRequest(id=entry.id), metadata=admin.md
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_APPROVED")
    reply = harness.accounts.SignIn(a.SignInRequest(email="eve@example.com", code=harness.code_for("eve@example.com")))
    assert reply.account.name == "Eve Example"
    assert reply.session_expire_time.ToDatetime(tzinfo=dt.UTC) == harness.clock.now() + dt.timedelta(days=30)
    kinds = [
        e.kind for e in harness.admin.GetAuditLog(ad.GetAuditLogRequest(), metadata=harness.staff("admin").md).events
    ]
    assert {"WAITLIST_APPROVED", "ACCOUNT_CREATED", "SIGN_IN"} <= set(kinds)


def test_invitation_flow_requires_attestation_and_cannot_be_reused(harness):
    inviter = harness.sign_up("inviter@example.com", "Ivy")
    harness.accounts.InviteFriend(a.InviteFriendRequest(email="friend@example.com", name="Finn"), metadata=inviter.md)
    mail = harness.last_email_to("friend@example.com")
    body = mail.get_content()
    assert "Hi Finn," in body and "Ivy invited you" in body
    token = body.split("invitation code:")[1].split()[0]
    before = row_counts(harness)
    code, reason = status_of(harness.accounts.AcceptInvitation, a.AcceptInvitationRequest(invitation_token=token))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "AGE_ATTESTATION_REQUIRED")
    assert row_counts(harness) == before
    reply = harness.accounts.AcceptInvitation(a.AcceptInvitationRequest(invitation_token=token, is_16_or_older=True))
    assert reply.account.email == "friend@example.com" and reply.account.name == "Finn"
    assert (
        harness.accounts.GetAccount(a.GetAccountRequest(), metadata=bearer(reply.session_token)).account.id
        == reply.account.id
    )
    code, reason = status_of(
        harness.accounts.AcceptInvitation, a.AcceptInvitationRequest(invitation_token=token, is_16_or_older=True)
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INVITATION_ALREADY_USED")
    code, reason = status_of(
        harness.accounts.AcceptInvitation, a.AcceptInvitationRequest(invitation_token="made-up", is_16_or_older=True)
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "NOT_INVITED")


def test_invitations_expire(harness):
    h = harness
    inviter = h.sign_up("inv2@example.com")
    h.accounts.InviteFriend(a.InviteFriendRequest(email="late@example.com", name="Late"), metadata=inviter.md)
    token = h.last_email_to("late@example.com").get_content().split("invitation code:")[1].split()[0]
    h.clock.advance(seconds=h.settings.invitation_ttl_seconds)
    code, reason = status_of(
        h.accounts.AcceptInvitation, a.AcceptInvitationRequest(invitation_token=token, is_16_or_older=True)
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "NOT_INVITED")


def test_inviting_an_existing_member_reveals_nothing_and_sends_nothing(harness):
    h = harness
    inviter = h.sign_up("one@example.com")
    h.sign_up("two@example.com")
    h.new_emails()
    h.accounts.InviteFriend(a.InviteFriendRequest(email="two@example.com", name="Two"), metadata=inviter.md)
    assert h.new_emails() == []


def test_invitations_are_rate_limited(harness):
    h = harness
    inviter = h.sign_up("many@example.com")
    for i in range(h.settings.invitations_per_day):
        h.accounts.InviteFriend(a.InviteFriendRequest(email=f"f{i}@example.com", name="F"), metadata=inviter.md)
    code, reason = status_of(
        h.accounts.InviteFriend, a.InviteFriendRequest(email="toomany@example.com", name="F"), metadata=inviter.md
    )
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")


# --- P3: sign-in codes and sessions -------------------------------------------------------


def test_same_answer_for_known_and_unknown_emails(harness):
    harness.sign_up("known@example.com")
    known = harness.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email="known@example.com"))
    unknown = harness.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email="nobody@example.com"))
    assert known == unknown
    assert [msg["To"] for msg in harness.new_emails()] == ["known@example.com"]


def test_code_expires_after_ten_minutes(harness):
    user = harness.sign_up("exp@example.com")
    code = harness.code_for(user.email)
    harness.clock.advance(minutes=10)
    assert status_of(harness.accounts.SignIn, a.SignInRequest(email=user.email, code=code)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_CODE",
    )
    code = harness.code_for(user.email)
    harness.clock.advance(minutes=9, seconds=59)
    harness.accounts.SignIn(a.SignInRequest(email=user.email, code=code))


def test_code_is_single_use_and_superseded_by_a_new_one(harness):
    user = harness.sign_up("once@example.com")
    first = harness.code_for(user.email)
    second = harness.code_for(user.email)
    if first != second:
        assert status_of(harness.accounts.SignIn, a.SignInRequest(email=user.email, code=first))[1] == "INVALID_CODE"
    harness.accounts.SignIn(a.SignInRequest(email=user.email, code=second))
    assert status_of(harness.accounts.SignIn, a.SignInRequest(email=user.email, code=second))[1] == "INVALID_CODE"


def test_wrong_codes_lock_the_code_and_are_audited(harness):
    user = harness.sign_up("lock@example.com")
    good = harness.code_for(user.email)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    for _ in range(harness.settings.code_max_attempts):
        assert status_of(harness.accounts.SignIn, a.SignInRequest(email=user.email, code=wrong))[1] == "INVALID_CODE"
    assert status_of(harness.accounts.SignIn, a.SignInRequest(email=user.email, code=good)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CODE_LOCKED",
    )
    admin = harness.staff("admin")
    failed = harness.admin.GetAuditLog(
        ad.GetAuditLogRequest(kind="SIGN_IN_FAILED", actor_id=user.account_id), metadata=admin.md
    )
    assert len(failed.events) == harness.settings.code_max_attempts + 1
    locked = harness.admin.GetAuditLog(ad.GetAuditLogRequest(kind="SIGN_IN_CODE_LOCKED"), metadata=admin.md)
    assert [e.actor_id for e in locked.events] == [user.account_id]
    # a fresh code works again
    harness.accounts.SignIn(a.SignInRequest(email=user.email, code=harness.code_for(user.email)))


def test_unknown_emails_lock_out_exactly_like_known_ones(harness):
    """No enumeration through the lockout: every code request makes a live code, delivered or not."""
    harness.sign_up("real@example.com")
    answers = {}
    for address in ("real@example.com", "ghost@example.com"):
        harness.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email=address))
        answers[address] = [
            status_of(harness.accounts.SignIn, a.SignInRequest(email=address, code="000000")) for _ in range(7)
        ]
    assert answers["real@example.com"] == answers["ghost@example.com"]
    assert answers["ghost@example.com"][-1] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CODE_LOCKED")


def test_code_requests_are_rate_limited_alike_for_unknown_emails(harness):
    limit = harness.settings.code_requests_per_window
    for address in ("rl-unknown@example.com",):
        for _ in range(limit):
            harness.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email=address))
        code, reason = status_of(harness.accounts.RequestSignInCode, a.RequestSignInCodeRequest(email=address))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    harness.clock.advance(seconds=harness.settings.code_request_window_seconds + 1)
    harness.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email="rl-unknown@example.com"))


def test_bad_filters_and_timestamps_are_refused(harness):
    h = harness
    admin = h.staff("admin")
    assert status_of(h.admin.ListWaitlist, ad.ListWaitlistRequest(state=77), metadata=admin.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    user = h.sign_up("future@example.com")
    # A purchase signed a day after the server's clock: the store's dates are checked, not the client's.
    jws = h.app_store_transaction(signedDate=int((h.clock.now() + dt.timedelta(days=1)).timestamp() * 1000))
    req = p.RecordPurchaseRequest(store=p.STORE_APP_STORE, signed_transaction=jws)
    assert status_of(h.purchases.RecordPurchase, req, metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "RECEIPT_INVALID",
    )
    assert h.db_call(m.Purchase.select().count) == 0


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "12 456", "١٢٣٤٥٦"])
def test_malformed_codes(harness, code):
    got = status_of(harness.accounts.SignIn, a.SignInRequest(email="x@example.com", code=code))
    assert got == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CODE")


def test_codes_and_tokens_are_stored_hashed(harness):
    user = harness.sign_up("hash@example.com")
    code = harness.code_for(user.email)
    stored_codes = harness.db_call(lambda: [r.code_hash for r in m.SignInCode.select()])
    stored_tokens = harness.db_call(lambda: [r.token_hash for r in m.Session.select()])
    assert code not in " ".join(stored_codes)
    assert user.token not in stored_tokens and all(len(t) == 64 for t in stored_tokens)
    assert len(user.token) >= 43  # 256 bits, url-safe base64


def test_session_expires_and_sign_out_revokes(harness):
    user = harness.sign_up("sess@example.com")
    harness.accounts.GetAccount(a.GetAccountRequest(), metadata=user.md)
    harness.clock.advance(seconds=harness.settings.session_ttl_seconds)
    assert status_of(harness.accounts.GetAccount, a.GetAccountRequest(), metadata=user.md) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "SESSION_EXPIRED",
    )
    fresh = harness.accounts.SignIn(a.SignInRequest(email=user.email, code=harness.code_for(user.email)))
    harness.accounts.SignOut(a.SignOutRequest(), metadata=bearer(fresh.session_token))
    assert status_of(harness.accounts.GetAccount, a.GetAccountRequest(), metadata=bearer(fresh.session_token))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )


# --- P4: the name --------------------------------------------------------------------------


def test_update_name_is_used_in_later_emails(harness):
    user = harness.sign_up("name@example.com", "Old Name")
    updated = harness.accounts.UpdateName(a.UpdateNameRequest(name="  New   Name "), metadata=user.md).account
    assert updated.name == "New Name"
    harness.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email=user.email))
    assert "Hi New Name," in harness.last_email_to(user.email, "sign-in code").get_content()
    assert status_of(harness.accounts.UpdateName, a.UpdateNameRequest(name=""), metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_NAME",
    )


# --- P5: the free trial and the email HMAC --------------------------------------------------


def test_free_trial_only_for_an_email_hash_never_seen(harness):
    first = harness.sign_up("trial@example.com")
    assert harness.purchases.GetBalance(p.GetBalanceRequest(), metadata=first.md).free_trial_granted
    # Remove the account as the purge will (issue 6): only the email's HMAC stays.
    harness.db_call(lambda: m.Account.delete().where(m.Account.id == first.account_id).execute())
    harness.db_call(
        lambda: m.WaitlistEntry.delete().where(m.WaitlistEntry.email_hmac == harness.email_hmac(first.email)).execute()
    )
    known = harness.db_call(lambda: [k.email_hmac for k in m.KnownEmail.select()])
    assert first.email not in " ".join(known)
    again = harness.sign_up("Trial@Example.com")
    balance = harness.purchases.GetBalance(p.GetBalanceRequest(), metadata=again.md)
    assert not balance.free_trial_granted and balance.credits == 0


# --- P17: deletion and reactivation ----------------------------------------------------------


def test_delete_requires_the_right_email_and_changes_nothing_otherwise(harness):
    user = harness.sign_up("del@example.com")
    before = row_counts(harness)
    for wrong in ("", "other@example.com", "garbage"):
        got = status_of(harness.accounts.DeleteAccount, a.DeleteAccountRequest(confirm_email=wrong), metadata=user.md)
        assert got == (grpc.StatusCode.INVALID_ARGUMENT, "EMAIL_MISMATCH")
    assert row_counts(harness) == before


def test_a_second_deletion_that_raced_past_the_access_check_keeps_the_first_purge_date(harness):
    from faceharmony.server.logic import accounts

    user = harness.sign_up("twice@example.com")
    first = harness.db_call(accounts.delete_account, harness.api.app, user.account_id, user.email)
    harness.clock.advance(days=3)
    # What a concurrent DeleteAccount that passed the access check before the first one committed reaches.
    second = harness.db_call(accounts.delete_account, harness.api.app, user.account_id, user.email)
    assert second.purge_after == first.purge_after and second.deleted_at == first.deleted_at
    assert len([e for e in harness.new_emails() if "will be deleted" in e["Subject"]]) == 1


def test_deleted_account_can_only_reactivate_and_not_after_the_grace_period(harness):
    user = harness.sign_up("grace@example.com", "Grace")
    other = harness.accounts.SignIn(a.SignInRequest(email=user.email, code=harness.code_for(user.email)))
    deleted = harness.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md).account
    # every session died, not only the caller's
    assert status_of(harness.accounts.GetAccount, a.GetAccountRequest(), metadata=bearer(other.session_token))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    mail = harness.last_email_to(user.email, "will be deleted")
    assert "Hi Grace," in mail.get_content()
    purge_after = deleted.purge_after.ToDatetime(tzinfo=dt.UTC)
    harness.clock.set(purge_after - dt.timedelta(seconds=1))
    s = harness.accounts.SignIn(a.SignInRequest(email=user.email, code=harness.code_for(user.email)))
    md = bearer(s.session_token)
    assert s.account.state == a.ACCOUNT_STATE_DEACTIVATED
    assert harness.accounts.GetAccount(a.GetAccountRequest(), metadata=md).account.purge_after == deleted.purge_after
    for call, req in [
        (harness.accounts.UpdateName, a.UpdateNameRequest(name="x")),
        (harness.accounts.InviteFriend, a.InviteFriendRequest(email="z@example.com", name="z")),
        (harness.purchases.GetBalance, p.GetBalanceRequest()),
    ]:
        assert status_of(call, req, metadata=md) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_DEACTIVATED")
    harness.clock.set(purge_after)
    assert status_of(harness.accounts.ReactivateAccount, a.ReactivateAccountRequest(), metadata=md) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "GRACE_PERIOD_OVER",
    )
    # and no new code is sent once the grace period is over
    harness.new_emails()
    harness.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email=user.email))
    assert harness.new_emails() == []


def test_reactivation_restores_everything_and_is_audited(harness):
    user = harness.sign_up("back@example.com", "Back")
    harness.buy(user)
    harness.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    harness.clock.advance(days=29)
    s = harness.accounts.SignIn(a.SignInRequest(email=user.email, code=harness.code_for(user.email)))
    harness.accounts.ReactivateAccount(a.ReactivateAccountRequest(), metadata=bearer(s.session_token))
    assert "Hi Back," in harness.last_email_to(user.email, "active again").get_content()
    assert (
        len(harness.purchases.ListPurchases(p.ListPurchasesRequest(), metadata=bearer(s.session_token)).purchases) == 1
    )
    got = status_of(harness.accounts.ReactivateAccount, a.ReactivateAccountRequest(), metadata=bearer(s.session_token))
    assert got == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_DEACTIVATED")
    admin = harness.staff("admin")
    kinds = [
        e.kind
        for e in harness.admin.GetAuditLog(ad.GetAuditLogRequest(subject_id=user.account_id), metadata=admin.md).events
    ]
    assert "ACCOUNT_DELETED" in kinds and "ACCOUNT_REACTIVATED" in kinds


# --- P20: the audit log holds ids, not personal data -----------------------------------------


def test_audit_log_holds_no_personal_data(harness):
    user = harness.sign_up("private.person@example.com", "Private Person")
    harness.accounts.UpdateName(a.UpdateNameRequest(name="Secret Name"), metadata=user.md)
    status_of(harness.accounts.SignIn, a.SignInRequest(email=user.email, code="000000"))
    harness.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    rows = harness.db_call(lambda: list(m.AuditEvent.select().dicts()))
    dump = repr(rows).lower()
    for secret in ("private.person", "example.com", "secret name", "private person"):
        assert secret not in dump
    assert len(rows) >= 5


def test_concurrent_first_sign_ins_create_one_account(harness):
    """Two sign-ins racing with the same live code: one wins, one account exists."""
    import concurrent.futures

    harness.accounts.JoinWaitlist(a.JoinWaitlistRequest(name="Race", email="race@example.com", is_16_or_older=True))
    admin = harness.staff("admin")
    entry = harness.admin.ListWaitlist(ad.ListWaitlistRequest(), metadata=admin.md).entries[0]
    harness.admin.ApproveWaitlistEntry(ad.ApproveWaitlistEntryRequest(id=entry.id), metadata=admin.md)
    code = harness.code_for("race@example.com")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(
                lambda _: status_of(harness.accounts.SignIn, a.SignInRequest(email="race@example.com", code=code)),
                range(4),
            )
        )
    assert [c for c, _ in results].count(grpc.StatusCode.OK) == 1
    assert all(r == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CODE") for r in results if r[0] != grpc.StatusCode.OK)
    assert (
        harness.db_call(m.Account.select().where(m.Account.email_hmac == harness.email_hmac("race@example.com")).count)
        == 1
    )


def test_database_errors_map_to_unavailable(sqlite_harness):
    """A database outage is UNAVAILABLE (retry), never INTERNAL. (Simulated on SQLite, where a vanished
    table raises OperationalError like a lost database file; PostgreSQL reports outages the same way.)"""
    h = sqlite_harness
    user = h.sign_up("outage@example.com")

    def break_db():
        m.Account._meta.database.obj.execute_sql("ALTER TABLE account RENAME TO account_gone")

    h.db_call(break_db)
    try:
        got = status_of(h.accounts.GetAccount, a.GetAccountRequest(), metadata=user.md)
        assert got == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    finally:
        h.db_call(lambda: m.Account._meta.database.obj.execute_sql("ALTER TABLE account_gone RENAME TO account"))
    assert isinstance(pw.OperationalError(), pw.PeeweeException)
