"""The account life cycle end to end, as a new user would live it, on both database backends."""

from __future__ import annotations

import datetime as dt

import grpc

from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import purchase_pb2 as p
from tests.support.harness import status_of


def test_waitlist_to_signed_in_user_with_free_trial(harness):
    user = harness.sign_up("ada@example.com", "Ada Lovelace")
    me = harness.accounts.GetAccount(a.GetAccountRequest(), metadata=user.md).account
    assert me.email == "ada@example.com"
    assert me.name == "Ada Lovelace"
    assert me.state == a.ACCOUNT_STATE_ACTIVE
    assert me.role == a.ROLE_USER
    balance = harness.purchases.GetBalance(p.GetBalanceRequest(), metadata=user.md)
    assert balance.free_trial_granted
    assert balance.credits == harness.settings.free_trial_credits > 0


def test_delete_and_reactivate_within_grace(harness):
    user = harness.sign_up("bob@example.com", "Bob")
    deleted = harness.accounts.DeleteAccount(
        a.DeleteAccountRequest(confirm_email="Bob@Example.com"), metadata=user.md
    ).account
    assert deleted.state == a.ACCOUNT_STATE_DEACTIVATED
    assert deleted.purge_after.ToDatetime(tzinfo=dt.UTC) == harness.clock.now() + dt.timedelta(days=30)
    # the deleting session is dead
    assert (
        status_of(harness.accounts.GetAccount, a.GetAccountRequest(), metadata=user.md)[0]
        == grpc.StatusCode.UNAUTHENTICATED
    )
    harness.clock.advance(days=29, hours=23, minutes=59, seconds=59)
    again = harness.accounts.SignIn(a.SignInRequest(email=user.email, code=harness.code_for(user.email)))
    md = (("authorization", f"Bearer {again.session_token}"),)
    assert status_of(harness.accounts.UpdateName, a.UpdateNameRequest(name="X"), metadata=md) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_DEACTIVATED",
    )
    back = harness.accounts.ReactivateAccount(a.ReactivateAccountRequest(), metadata=md).account
    assert back.state == a.ACCOUNT_STATE_ACTIVE
    assert not back.HasField("purge_after")
    assert harness.accounts.UpdateName(a.UpdateNameRequest(name="Robert"), metadata=md).account.name == "Robert"
