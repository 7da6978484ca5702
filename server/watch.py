"""WatchModel's and WatchOrder's fan-out: however many clients watch, one background task per hub polls the database once per tick for every watched row and hands each watcher the latest snapshot.

A watcher costs a small asyncio queue (holding only the newest snapshot),
not a thread or a database connection, so thousands of concurrent watchers
cost one read per tick (in chunks of 500 ids), and the API message of each
change is built once for all its watchers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from faceharmony.core.db.models import Order, UserModel
from faceharmony.server import convert
from faceharmony.server.context import AppContext

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


def _read(model_cls, build, ids: list[str]) -> dict[str, Snapshot]:
    out: dict[str, Snapshot] = {}
    for start in range(0, len(ids), CHUNK):
        rows = list(model_cls.select().where(model_cls.id.in_(ids[start : start + CHUNK])))
        for row, message in zip(rows, build(rows)):
            out[row.id] = snapshot(row, message)
    return out


def model_snapshots(model_ids: list[str]) -> dict[str, Snapshot]:
    return _read(UserModel, convert.models_with_photos, model_ids)


def order_snapshots(order_ids: list[str]) -> dict[str, Snapshot]:
    return _read(Order, convert.orders, order_ids)


class WatchHub:
    def __init__(self, app: AppContext, poll_seconds: float, fetch: Callable[[list[str]], dict[str, Snapshot]], gone_state: str) -> None:
        """`fetch` reads the snapshots of a list of ids; a row it no longer finds is reported in `gone_state`."""
        self.app = app
        self.poll_seconds = poll_seconds
        self.fetch = fetch
        self.gone_state = gone_state
        self._watchers: dict[str, set[asyncio.Queue]] = {}
        self._last: dict[str, Snapshot] = {}
        self._task: asyncio.Task | None = None
        self.polls = 0  # database queries made (for tests and metrics)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="watch-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def watcher_count(self) -> int:
        return sum(len(q) for q in self._watchers.values())

    async def watch(self, first: Snapshot) -> AsyncIterator[Snapshot]:
        """Yields `first`, then every change of its row, until the caller stops iterating."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._watchers.setdefault(first.key, set()).add(queue)
        self._last.setdefault(first.key, first)
        try:
            yield first
            seen = (first.state, first.progress)
            while True:
                snap = await queue.get()
                if (snap.state, snap.progress) != seen:
                    seen = (snap.state, snap.progress)
                    yield snap
        finally:
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
                self.polls += (len(ids) + CHUNK - 1) // CHUNK
                fresh = await self.app.run(self.fetch, ids)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next tick tries again
                log.exception("watch poll failed")
                continue
            for key, queues in list(self._watchers.items()):
                snap = fresh.get(key)
                if snap is None:  # purged
                    snap = Snapshot(key, self.gone_state, 0.0, None)
                last = self._last.get(key)
                if last is not None and (last.state, last.progress) == (snap.state, snap.progress):
                    continue
                self._last[key] = snap
                for queue in queues:
                    if queue.full():
                        queue.get_nowait()
                    queue.put_nowait(snap)
