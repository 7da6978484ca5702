"""The bounded queue in front of the verifier threads, and the budget of decoded pixels in flight.

An upload is decoded and verified on one of `verifier_workers` threads. In
front of them at most `verify_queue_size` uploads may wait; one more is
refused at once with RESOURCE_EXHAUSTED / VERIFY_QUEUE_FULL, so waiting
uploads (each holding its request bytes) are bounded. Before decoding, an
upload reserves its pixels (width x height read from the header, which is
what decoding allocates, a few bytes per pixel) from a budget of
`verify_max_pixels_in_flight`; it runs when a thread is free and its pixels
fit, waits in the queue otherwise, and is refused with VERIFY_QUEUE_FULL if
that has not happened within `verify_queue_wait_seconds`. The reservation is
given back when the thread has finished with the upload, not when its call
ends: a client that cancels mid-verification frees its slot only once the
thread is done, so cancelled calls cannot pile work up behind the threads.

Everything but the work itself runs on the server's event loop (no lock).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

import grpc

from faceharmony.server.errors import ApiError

T = TypeVar("T")


def _full() -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "VERIFY_QUEUE_FULL", "photo verification is busy; retry after a pause"
    )


class VerifyQueue:
    """Uploads wait in line (first come, first served): a newcomer never overtakes a waiting upload, and only the
    head of the line starts once a thread is free and its pixels fit, so no waiter runs out of time while later
    uploads go ahead of it."""

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        workers: int,
        queue_size: int,
        max_pixels: int,
        wait_seconds: float,
    ) -> None:
        self.executor = executor
        self.workers, self.queue_size, self.max_pixels, self.wait_seconds = (
            workers,
            queue_size,
            max_pixels,
            wait_seconds,
        )
        self.running = 0  # handed to a thread and not finished
        self.pixels = 0  # reserved by the running ones
        self._line: collections.deque[asyncio.Event] = collections.deque()  # admitted, not yet running

    @property
    def waiting(self) -> int:
        return len(self._line)

    def _fits(self, pixels: int) -> bool:
        if self.running >= self.workers:
            return False
        return self.running == 0 or self.pixels + pixels <= self.max_pixels

    async def run(self, pixels: int, fn: Callable[..., T], *args) -> T:
        """fn(*args) on a verifier thread once a thread is free and `pixels` fit; VERIFY_QUEUE_FULL otherwise."""
        loop = asyncio.get_running_loop()
        if self._line or not self._fits(pixels):
            await self._wait(loop, pixels)
        self.running += 1
        self.pixels += pixels
        try:
            work = self.executor.submit(fn, *args)
        except BaseException:
            self._release(pixels)
            raise
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, pixels))
        return await asyncio.wrap_future(work)

    async def _wait(self, loop: asyncio.AbstractEventLoop, pixels: int) -> None:
        if len(self._line) >= self.queue_size:
            raise _full()
        turn = asyncio.Event()
        self._line.append(turn)
        deadline = loop.time() + self.wait_seconds
        try:
            # No await between the check and clear(): a wake-up cannot be missed (one event loop, no threads).
            while not (self._line[0] is turn and self._fits(pixels)):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _full()
                turn.clear()
                try:
                    await asyncio.wait_for(turn.wait(), remaining)
                except TimeoutError:
                    pass
        finally:
            self._line.remove(turn)
            self._wake_head()  # the next in line may fit too (another thread free), or is now first

    def _wake_head(self) -> None:
        if self._line:
            self._line[0].set()

    def _release(self, pixels: int) -> None:
        self.running -= 1
        self.pixels -= pixels
        self._wake_head()

    def held(self) -> dict[str, int]:
        """What is held now (for tests and metrics)."""
        return {"waiting": self.waiting, "running": self.running, "pixels": self.pixels}
