"""The watch hub's tick against watchers that arrive while it runs: a stream opened during a tick's probe is not
told its model is gone (found by benchmarks/chaos.py: WatchModel answered NOT_FOUND right after CreateModel)."""

from __future__ import annotations

import threading

from faceharmony.core import ids
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import write_transaction
from faceharmony.server.watch import WatchedTable
from faceharmony.v1 import model_pb2 as mp


def queued_model(h, user) -> str:
    def insert() -> str:
        with write_transaction(h.db):
            now = h.clock.now()
            return m.UserModel.create(
                id=ids.new_id(),
                account=user.account_id,
                key_id=m.Account.get_by_id(user.account_id).key_id,
                display_name="Me",
                state="queued",
                trigger_token="sks",
                created_at=now,
                updated_at=now,
            ).id

    return h.db_call(insert)


class HeldProbe(WatchedTable):
    """The hub's table, whose next probe waits (in the server's thread pool) until released."""

    def __init__(self, inner: WatchedTable) -> None:
        super().__init__(inner.table, inner.build, inner.gone_state)
        self.armed = False
        self.entered, self.release = threading.Event(), threading.Event()

    def probe(self, ids_):
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(30)
        return super().probe(ids_)


def test_a_watch_opened_during_a_tick_is_not_told_its_model_is_gone(harness):
    h = harness
    user = h.sign_up("hub@example.com")
    first_model, second_model = queued_model(h, user), queued_model(h, user)
    hub = h.api.watch_hub
    original = hub.watched
    held = HeldProbe(original)
    hub.watched = held
    try:
        one = h.models.WatchModel(mp.WatchModelRequest(id=first_model), metadata=user.md, timeout=30)
        assert next(one).state == mp.MODEL_STATE_QUEUED  # the hub now ticks
        held.armed = True
        assert held.entered.wait(30)  # a tick is probing the rows it watched when it began
        two = h.models.WatchModel(mp.WatchModelRequest(id=second_model), metadata=user.md, timeout=30)
        assert next(two).state == mp.MODEL_STATE_QUEUED  # registered while that probe runs
        held.release.set()
        h.db_call(
            lambda: (
                m.UserModel.update(state="failed", failure_reason="X").where(m.UserModel.id == second_model).execute()
            )
        )
        event = next(two)  # before the fix: NOT_FOUND, the row "gone" because the tick had not probed it
        assert event.state == mp.MODEL_STATE_FAILED
        one.cancel()
    finally:
        held.release.set()
        hub.watched = original
