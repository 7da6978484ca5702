"""WatchModel's fan-out: however many clients watch, one background task polls the database once per tick for every watched model and hands each watcher the latest snapshot.

A watcher costs a small asyncio queue (holding only the newest snapshot),
not a thread or a database connection, so thousands of concurrent watchers
cost one read per tick (in chunks of 500 ids), and the API message of each
change is built once for all its watchers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from faceharmony.core.db.models import UserModel
from faceharmony.server import convert
from faceharmony.server.context import AppContext
from faceharmony.v1 import model_pb2

log = logging.getLogger(__name__)
CHUNK = 500


@dataclass(frozen=True)
class Snapshot:
    """A model as watchers see it, read once per tick for all of them: the API message is built from it."""

    model_id: str
    state: str
    progress: float
    message: model_pb2.Model | None  # None once the model is gone


def snapshot(row: UserModel, message: model_pb2.Model) -> Snapshot:
    return Snapshot(row.id, row.state, round(row.progress, 4), message)


def snapshots(model_ids: list[str]) -> dict[str, Snapshot]:
    out: dict[str, Snapshot] = {}
    for start in range(0, len(model_ids), CHUNK):
        rows = list(UserModel.select().where(UserModel.id.in_(model_ids[start : start + CHUNK])))
        for row, message in zip(rows, convert.models_with_photos(rows)):
            out[row.id] = snapshot(row, message)
    return out


class WatchHub:
    def __init__(self, app: AppContext, poll_seconds: float) -> None:
        self.app = app
        self.poll_seconds = poll_seconds
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
        """Yields `first`, then every change of the model, until the caller stops iterating."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._watchers.setdefault(first.model_id, set()).add(queue)
        self._last.setdefault(first.model_id, first)
        try:
            yield first
            seen = (first.state, first.progress)
            while True:
                snap = await queue.get()
                if (snap.state, snap.progress) != seen:
                    seen = (snap.state, snap.progress)
                    yield snap
        finally:
            watchers = self._watchers.get(first.model_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[first.model_id]
                    self._last.pop(first.model_id, None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            if not self._watchers:
                continue
            try:
                ids = list(self._watchers)
                self.polls += (len(ids) + CHUNK - 1) // CHUNK
                fresh = await self.app.run(snapshots, ids)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next tick tries again
                log.exception("watch poll failed")
                continue
            for model_id, queues in list(self._watchers.items()):
                snap = fresh.get(model_id)
                if snap is None:  # purged
                    snap = Snapshot(model_id, "pending_deletion", 0.0, None)
                last = self._last.get(model_id)
                if last is not None and (last.state, last.progress) == (snap.state, snap.progress):
                    continue
                self._last[model_id] = snap
                for queue in queues:
                    if queue.full():
                        queue.get_nowait()
                    queue.put_nowait(snap)
