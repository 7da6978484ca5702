"""Every RPC of every service, called as anonymous, a user, a deactivated user, support and admin: the access rule of API.md holds, and nothing a client sends yields UNKNOWN or INTERNAL."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory

from faceharmony.clients.errors import reason_of
from faceharmony.server import access
from faceharmony.v1 import account_pb2 as a
from tests.support.harness import status_of

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
# Mutating the caller's own session or state: run last, in this order.
LAST = ["/faceharmony.v1.AccountService/ReactivateAccount", "/faceharmony.v1.AccountService/SignOut"]


def all_methods():
    methods = []
    for svc in access.service_descriptors():
        for m in svc.methods:
            methods.append((f"/{svc.full_name}/{m.name}", m))
    return sorted(methods, key=lambda item: (item[0] in LAST, LAST.index(item[0]) if item[0] in LAST else 0, item[0]))


def invoke(channel, path, method, request_bytes=None, metadata=()):
    """Calls any RPC generically; returns (code, reason)."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    serializer = (lambda _: request_bytes) if request_bytes is not None else request_cls.SerializeToString
    try:
        if method.server_streaming:
            call = channel.unary_stream(
                path, request_serializer=serializer, response_deserializer=response_cls.FromString
            )
            for _ in call(request_cls(), metadata=metadata, timeout=30):
                pass
        else:
            call = channel.unary_unary(
                path, request_serializer=serializer, response_deserializer=response_cls.FromString
            )
            call(request_cls(), metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), reason_of(exc)
    return grpc.StatusCode.OK, ""


def expected_denial(rule: int, role: str):
    """The (code, reason) a role must get for a rule, or None when the call must pass the access check."""
    if role == "anonymous":
        return None if rule == access.PUBLIC else (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    if rule in (access.PUBLIC, access.USER_OR_DEACTIVATED):
        return None
    if role == "deactivated":
        return (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_DEACTIVATED")
    if rule == access.USER:
        return None
    if rule == access.STAFF:
        return None if role in ("support", "admin") else (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    return None if role == "admin" else (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


@pytest.mark.parametrize("role", ["anonymous", "user", "deactivated", "support", "admin"])
def test_access_rules_for_every_rpc(harness, role):
    policy = access.build_policy()
    md = ()
    if role in ("user", "deactivated"):
        user = harness.sign_up(f"{role}@example.com", "Matrix Person")
        md = user.md
        if role == "deactivated":
            harness.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=md)
            reply = harness.accounts.SignIn(a.SignInRequest(email=user.email, code=harness.code_for(user.email)))
            md = (("authorization", f"Bearer {reply.session_token}"),)
    elif role in ("support", "admin"):
        md = harness.staff(role).md
    seen = 0
    for path, method in all_methods():
        code, reason = invoke(harness.channel, path, method, metadata=md)
        seen += 1
        assert code not in NEVER, (path, role, code)
        if code != grpc.StatusCode.OK:
            assert reason, f"{path} as {role}: {code} without a reason"
        denial = expected_denial(policy[path], role)
        if denial is None:
            assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), (
                path,
                role,
                code,
                reason,
            )
            if role == "deactivated":
                assert reason != "ACCOUNT_DEACTIVATED", path
        else:
            assert (code, reason) == denial, (path, role)
    assert seen == len(policy) >= 39


def test_undecodable_requests_are_invalid_argument(harness):
    user = harness.sign_up("bytes@example.com")
    for path, method in all_methods():
        for md in ((), user.md):
            code, reason = invoke(harness.channel, path, method, request_bytes=b"\xff\xff\xff\xff", metadata=md)
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), path


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Basic abc", "bearer nonsense-token", "Bearer " + "x" * 500, "Token abc"],
)
def test_malformed_or_unknown_tokens_are_unauthenticated(harness, header):
    code, reason = status_of(harness.accounts.GetAccount, a.GetAccountRequest(), metadata=(("authorization", header),))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(harness, scheme):
    user = harness.sign_up("scheme@example.com")
    reply = harness.accounts.GetAccount(a.GetAccountRequest(), metadata=(("authorization", f"{scheme} {user.token}"),))
    assert reply.account.id == user.account_id


def test_two_authorization_headers_are_refused(harness):
    h = harness
    one, two = h.sign_up("one-h@example.com"), h.sign_up("two-h@example.com")
    both = one.md + two.md
    assert status_of(h.accounts.GetAccount, a.GetAccountRequest(), metadata=both) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


def test_unknown_method_is_unimplemented_not_internal(harness):
    call = harness.channel.unary_unary("/faceharmony.v1.AccountService/Nope")
    with pytest.raises(grpc.RpcError) as err:
        call(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
