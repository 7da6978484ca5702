"""Bounds on the calls in progress, per server and per account, so one caller cannot hold the server's memory or threads.

Two kinds of call are counted apart. Ordinary calls (unary, and short streams
such as a download) are bounded by `max_concurrent_calls` per server
(RESOURCE_EXHAUSTED / SERVER_BUSY beyond it) and `max_calls_per_account` per
signed-in account (RESOURCE_EXHAUSTED / TOO_MANY_CONCURRENT_CALLS). Watch
streams (`Watch*` server streams) are long-lived and cheap (an asyncio queue
fed by a shared poller, server/watch.py), so they do not use up the call slots
a client needs meanwhile: they have their own bounds, `max_concurrent_watches`
and `max_watches_per_account`, with the same reasons. The server slot is taken
before the caller is authenticated (so sign-in floods are bounded too), the
account slot right after. gRPC health checking is not counted (probes must see
a busy server as serving).

These answers come from the interceptor, after the request message was
received. In front of them, grpc.aio's own `maximum_concurrent_rpcs` is set as
a hard outer bound (`hard_limit`): both server bounds plus as many calls again,
so a flood of RPCs is refused by gRPC itself before their messages are read
(RESOURCE_EXHAUSTED without an ErrorInfo), while ordinary overload meets our
bounds first and gets a reason. gRPC reads each request in full before the
interceptor runs, so the bytes a flood of slow uploads can have buffered at once
are bounded by that hard limit times the largest message, not by our bounds.

Everything here runs on the server's event loop: the counters need no lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import grpc

from faceharmony.core.settings import Settings
from faceharmony.server.errors import ApiError

CALL = "call"
WATCH = "watch"
UNCOUNTED_SERVICES = ("grpc.health.v1.Health",)


def kind_of(method: str, server_streaming: bool) -> str | None:
    """CALL, WATCH, or None for what is not counted (health checking)."""
    service, _, name = method.strip("/").partition("/")
    if service in UNCOUNTED_SERVICES:
        return None
    return WATCH if server_streaming and name.startswith("Watch") else CALL


def hard_limit(settings: Settings) -> int:
    """grpc.aio's maximum_concurrent_rpcs: above both server bounds, so they answer first with a reason."""
    return 2 * settings.max_concurrent_calls + settings.max_concurrent_watches


def _busy() -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "SERVER_BUSY", "the server is busy; retry after a pause")


def _too_many(kind: str) -> ApiError:
    what = "watch streams" if kind == WATCH else "calls"
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_CONCURRENT_CALLS",
        f"this account has too many {what} in progress; retry after a pause",
    )


@dataclass
class Slot:
    """One call's hold on the bounds; `release` gives back whatever it took (idempotent)."""

    limits: CallLimits
    kind: str
    account_id: str | None = None
    released: bool = False

    def add_account(self, account_id: str) -> None:
        """Takes the account's slot too, or raises TOO_MANY_CONCURRENT_CALLS (the server slot stays held until release)."""
        limits = self.limits
        if limits.per_account[self.kind][account_id] >= limits.account_bound[self.kind]:
            raise _too_many(self.kind)
        limits.per_account[self.kind][account_id] += 1
        self.account_id = account_id

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        limits = self.limits
        limits.in_server[self.kind] -= 1
        if self.account_id is not None:
            held = limits.per_account[self.kind]
            held[self.account_id] -= 1
            if held[self.account_id] <= 0:
                del held[self.account_id]


class CallLimits:
    def __init__(self, settings: Settings) -> None:
        self.server_bound = {CALL: settings.max_concurrent_calls, WATCH: settings.max_concurrent_watches}
        self.account_bound = {CALL: settings.max_calls_per_account, WATCH: settings.max_watches_per_account}
        self.in_server: Counter[str] = Counter()
        self.per_account: dict[str, Counter[str]] = {CALL: Counter(), WATCH: Counter()}

    def enter(self, kind: str) -> Slot:
        """Takes a server slot of this kind, or raises SERVER_BUSY."""
        if self.in_server[kind] >= self.server_bound[kind]:
            raise _busy()
        self.in_server[kind] += 1
        return Slot(self, kind)

    def held(self) -> dict:
        """What is held now (for tests and metrics): server counts by kind and the accounts holding slots."""
        return {
            "server": {k: v for k, v in self.in_server.items() if v},
            "accounts": {k: dict(v) for k, v in self.per_account.items() if v},
        }
