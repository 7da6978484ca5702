"""WatchModel's and WatchOrder's fan-out: however many clients watch, one background task per hub polls the database once per tick for every watched row and hands each watcher the latest snapshot.

A watcher costs a small asyncio queue (holding only the newest snapshot),
not a thread or a database connection, so thousands of concurrent watchers
cost one narrow read per tick (id, state, progress; in chunks of 500 ids), and
only rows that changed are read whole and turned into an API message, once for
all their watchers.

A stream lasts no longer than the session that opened it: each tick the hub
also checks every watcher's session in one narrow query (per 500 sessions)
and ends the streams of sessions that were revoked (sign-out, account
deletion), expired or whose account was deactivated, with the error a unary
call of that session would get (`auth.session_refusals`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from faceharmony.core.db.models import ModelState, Order, UserModel
from faceharmony.server import convert
from faceharmony.server.auth import SESSION_CHUNK, session_refusals
from faceharmony.server.context import AppContext
from faceharmony.server.errors import ApiError

log = logging.getLogger(__name__)
CHUNK = 500


@dataclass(frozen=True)
class Snapshot:
    """A watched row (model or order) as watchers see it, read once per tick for all of them."""

    key: str
    state: str
    progress: float
    message: object | None  # the API message; None once the row is gone


def snapshot(row, message) -> Snapshot:
    return Snapshot(row.id, row.state, round(row.progress, 4), message)


def _chunks(ids: list[str]):
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


class WatchedTable:
    """What a hub watches: a table with `id`, `state` and `progress`, and how its rows become API messages."""

    def __init__(self, table, build: Callable[[list], list], gone_state: str) -> None:
        self.table, self.build, self.gone_state = table, build, gone_state

    def probe(self, ids: list[str]) -> tuple[dict[str, tuple[str, float]], int]:
        """(state, progress) of each row still there, and the queries made: one narrow query per chunk."""
        t = self.table
        out, queries = {}, 0
        for chunk in _chunks(ids):
            queries += 1
            for row_id, state, progress in t.select(t.id, t.state, t.progress).where(t.id.in_(chunk)).tuples():
                out[row_id] = (state, round(progress, 4))
        return out, queries

    def read(self, ids: list[str]) -> tuple[dict[str, Snapshot], int]:
        """Full snapshots (rows and their messages) of the given rows, and the queries made (two per chunk)."""
        t = self.table
        out, queries = {}, 0
        for chunk in _chunks(ids):
            queries += 2
            rows = list(t.select().where(t.id.in_(chunk)))
            for row, message in zip(rows, self.build(rows)):
                out[row.id] = snapshot(row, message)
        return out, queries


MODELS = WatchedTable(UserModel, convert.models_with_photos, gone_state=ModelState.PENDING_DELETION)
ORDERS = WatchedTable(Order, convert.orders, gone_state="purged")


class WatchHub:
    def __init__(self, app: AppContext, poll_seconds: float, watched: WatchedTable) -> None:
        """Each tick probes (state, progress) of every watched row in one narrow query and reads full rows and
        builds messages only for those that changed; a row no longer found is reported in `gone_state`."""
        self.app = app
        self.poll_seconds = poll_seconds
        self.watched = watched
        self._watchers: dict[str, set[asyncio.Queue]] = {}
        self._sessions: dict[asyncio.Queue, str] = {}  # each watcher's session (checked every tick)
        self._ending: set[asyncio.Queue] = set()  # watchers handed their session's error
        self._last: dict[str, Snapshot] = {}
        self._task: asyncio.Task | None = None
        self.polls = 0  # database queries made by the hub for the watched rows (for tests and metrics)
        self.session_polls = 0  # and for the watchers' sessions

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="watch-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def watcher_count(self) -> int:
        return sum(len(q) for q in self._watchers.values())

    async def watch(self, first: Snapshot, session_id: str | None = None) -> AsyncIterator[Snapshot]:
        """Yields `first`, then every change of its row, until the caller stops iterating.

        With a session_id, raises the session's ApiError once it is no longer valid (checked every tick).
        """
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._watchers.setdefault(first.key, set()).add(queue)
        if session_id is not None:
            self._sessions[queue] = session_id
        self._last.setdefault(first.key, first)
        try:
            yield first
            seen = (first.state, first.progress)
            while True:
                snap = await queue.get()
                if isinstance(snap, ApiError):
                    raise snap
                if (snap.state, snap.progress) != seen:
                    seen = (snap.state, snap.progress)
                    yield snap
        finally:
            self._sessions.pop(queue, None)
            self._ending.discard(queue)
            watchers = self._watchers.get(first.key)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[first.key]
                    self._last.pop(first.key, None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            if not self._watchers:
                continue
            try:
                ids = list(self._watchers)
                current, queries = await self.app.run(self.watched.probe, ids)
                self.polls += queries
                changed = [k for k in ids if k in current and self._seen(k) != current[k]]
                fresh, queries = await self.app.run(self.watched.read, changed) if changed else ({}, 0)
                self.polls += queries
                sessions = sorted(set(self._sessions.values()))
                refused = await self.app.run(session_refusals, self.app, sessions) if sessions else {}
                self.session_polls += -(-len(sessions) // SESSION_CHUNK)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watch poll failed")
                continue
            for queue, session_id in list(self._sessions.items()):
                if session_id in refused and queue not in self._ending:
                    self._ending.add(queue)
                    self._put(queue, refused[session_id])
            probed = set(ids)
            for key, queues in list(self._watchers.items()):
                if key not in probed:  # a watcher that arrived during this tick: the next tick probes its row
                    continue
                snap = fresh.get(key)
                if snap is None:
                    if key in current:  # unchanged
                        continue
                    snap = Snapshot(key, self.watched.gone_state, 0.0, None)  # purged
                last = self._last.get(key)
                if last is not None and (last.state, last.progress) == (snap.state, snap.progress):
                    continue
                self._last[key] = snap
                for queue in queues:
                    if queue not in self._ending:  # a stream told to end is not told anything else
                        self._put(queue, snap)

    @staticmethod
    def _put(queue: asyncio.Queue, item) -> None:
        """Replaces what the watcher has not read yet: it only ever needs the newest item."""
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(item)

    def _seen(self, key: str) -> tuple[str, float] | None:
        last = self._last.get(key)
        return None if last is None else (last.state, last.progress)
