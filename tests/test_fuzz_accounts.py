"""Property-based: arbitrary text in every field of the public account RPCs gets a defined status with a reason, never UNKNOWN or INTERNAL, and a rejected call stores nothing."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceharmony.v1 import account_pb2 as a
from tests.support.harness import status_of
from tests.test_accounts import row_counts

text = st.one_of(
    st.text(max_size=300),
    st.emails().map(str),
    st.sampled_from(["", " ", "a@b.co", "Ünïcödé@exämple.com", "x" * 300, "\x00", "\ud7ff", "@", "a@b@c.d"]),
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check(h, call, request):
    before = row_counts(h)
    code, reason = status_of(call, request)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (code, request)
    if code != grpc.StatusCode.OK:
        assert reason
        assert row_counts(h) == before, request
    return code


@FUZZ
@given(name=text, email=text, adult=st.booleans(), note=text)
def test_join_waitlist_fuzz(harness, name, email, adult, note):
    check(
        harness,
        harness.accounts.JoinWaitlist,
        a.JoinWaitlistRequest(name=name, email=email, is_16_or_older=adult, note=note),
    )


@FUZZ
@given(email=text, code=text)
def test_sign_in_fuzz(harness, email, code):
    h = harness
    before = row_counts(h)
    got, reason = status_of(h.accounts.SignIn, a.SignInRequest(email=email, code=code))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and reason in ("INVALID_EMAIL", "INVALID_CODE")
    # a failed sign-in writes only its audit event
    after = row_counts(h)
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} in ({}, {"AuditEvent": 1})


@FUZZ
@given(token=text, adult=st.booleans())
def test_accept_invitation_fuzz(harness, token, adult):
    code = check(
        harness,
        harness.accounts.AcceptInvitation,
        a.AcceptInvitationRequest(invitation_token=token, is_16_or_older=adult),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@FUZZ
@given(email=text)
def test_request_code_fuzz(harness, email):
    h = harness
    code, reason = status_of(h.accounts.RequestSignInCode, a.RequestSignInCodeRequest(email=email))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), code
    assert code == grpc.StatusCode.OK or reason in ("INVALID_EMAIL", "RATE_LIMITED")
