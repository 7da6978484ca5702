"""WatchModel and WatchOrder streams last no longer than the session that opened them: a sign-out, an account deletion, an expiry or a deactivation ends the stream (within a hub tick) with the status a unary call of that session gets, on both database backends, while other users' streams go on."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from faceharmony.clients.errors import reason_of
from faceharmony.core.db import models as m
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import order_pb2 as o
from tests.support.harness import status_of
from tests.support.orders import order, ready_model


def training_model(h, user) -> str:
    """A model of `user` in training: its WatchModel stream stays open."""
    model_id = ready_model(h, user)
    h.db_call(lambda: m.UserModel.update(state="training", progress=0.25).where(m.UserModel.id == model_id).execute())
    return model_id


def open_watch(h, user, kind: str):
    if kind == "model":
        stream = h.models.WatchModel(mp.WatchModelRequest(id=training_model(h, user)), metadata=user.md, timeout=30)
        assert next(stream).state == mp.MODEL_STATE_TRAINING
    else:
        placed = order(h, user, [ready_model(h, user)], count=1)
        stream = h.orders.WatchOrder(o.WatchOrderRequest(id=placed.id), metadata=user.md, timeout=30)
        assert next(stream).order.state == o.ORDER_STATE_QUEUED
    return stream


def end_of(stream) -> tuple[grpc.StatusCode, str]:
    """How the stream ended; the deadline (30 s) fails the test if it never does."""
    with pytest.raises(grpc.RpcError) as err:
        for _ in stream:
            pass
    return err.value.code(), reason_of(err.value)


def unary_answer(h, user) -> tuple[grpc.StatusCode, str]:
    return status_of(h.models.ListModels, mp.ListModelsRequest(), metadata=user.md)


def sign_out(h, user):
    h.accounts.SignOut(a.SignOutRequest(), metadata=user.md)


def delete_account(h, user):
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)


def expire(h, user):
    h.clock.advance(dt.timedelta(seconds=h.settings.session_ttl_seconds + 1))


def deactivate(h, user):
    """Deactivated with its sessions left alive (as a support action or a half-done deletion could leave it)."""
    h.db_call(lambda: m.Account.update(state="deactivated").where(m.Account.id == user.account_id).execute())


@pytest.mark.parametrize("kind", ["model", "order"])
@pytest.mark.parametrize(
    "end,expected",
    [
        (sign_out, (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")),
        (delete_account, (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")),
        (expire, (grpc.StatusCode.UNAUTHENTICATED, "SESSION_EXPIRED")),
        (deactivate, (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_DEACTIVATED")),
    ],
    ids=["sign-out", "account-deleted", "expired", "deactivated"],
)
def test_a_watch_ends_with_its_session(harness, kind, end, expected):
    h = harness
    user, other = h.sign_up(f"watcher-{kind}@example.com"), h.sign_up(f"bystander-{kind}@example.com")
    stream, others = open_watch(h, user, kind), open_watch(h, other, kind)
    if end is expire:  # the bystander's session outlives the jump in time
        h.db_call(
            lambda: (
                m.Session.update(expires_at=h.clock.now() + dt.timedelta(days=3650))
                .where(m.Session.account == other.account_id)
                .execute()
            )
        )
    end(h, user)
    assert end_of(stream) == expected == unary_answer(h, user)
    assert h.api.watch_hub.watcher_count + h.api.order_hub.watcher_count == 1  # the ended stream left nothing behind
    # the other user's stream is still open: it sees the next change of its row
    if kind == "model":
        model_id = h.db_call(lambda: m.UserModel.get(m.UserModel.account == other.account_id).id)
        h.db_call(lambda: m.UserModel.update(progress=0.5).where(m.UserModel.id == model_id).execute())
        assert next(others).progress == 0.5
    else:
        order_id = h.db_call(lambda: m.Order.get(m.Order.account == other.account_id).id)
        h.db_call(lambda: m.Order.update(state="running").where(m.Order.id == order_id).execute())
        assert next(others).order.state == o.ORDER_STATE_RUNNING
    others.cancel()
