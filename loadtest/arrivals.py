"""The load drivers: a closed loop (fixed concurrency) and an open loop (Poisson arrivals at a target rate).

A driver calls `send(index)` (a target's request, made from its index: the target picks the model, the prompt
and the seed) on threads and collects the `Outcome`s. Both are bounded and stop by themselves: no request is
started after `count` were started or `duration_s` passed, and the driver then waits for those in flight (each
bounded by its target's own timeout). `stop` (an Event: the process's SIGINT/SIGTERM) ends a step early the
same way.

* `run_closed_loop(send, concurrency, ...)`: `concurrency` threads, each sending its next request as soon as
  its last one is answered.
* `run_open_loop(send, rate, ...)`: arrivals at the times of `poisson_schedule` (exponential gaps of mean
  1/rate, from a seeded generator), whatever the answers do. At most `max_inflight` requests are in flight:
  an arrival that finds them all busy is dropped (counted, not sent); one sent more than `late_after_s`
  after its scheduled time (the dispatcher fell behind) is counted late. Its latency runs from the scheduled
  arrival (report.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from faceharmony.loadtest.report import Outcome

Send = Callable[[int], Outcome]

MAX_COUNT = 100_000
MAX_DURATION_S = 3600.0
MAX_CONCURRENCY = 256
MAX_RATE = 1000.0


@dataclass
class StepRun:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0  # from the first send to the last answer
    dropped: int = 0
    late: int = 0
    stopped: bool = False  # ended by `stop`, not by its bounds


def _guarded(send: Send) -> Send:
    """`send` that never raises: a target's own bug is counted under its exception's name, not lost."""

    def call(index: int) -> Outcome:
        t0 = time.monotonic()
        try:
            return send(index)
        except Exception as exc:  # noqa: BLE001 - one broken request must not end the step
            return Outcome(ok=False, latency_s=time.monotonic() - t0, reason=f"CLIENT_{type(exc).__name__}")

    return call


def check_bounds(count: int, duration_s: float) -> None:
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be 1..{MAX_COUNT}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration must be within (0, {MAX_DURATION_S:g}] seconds")


def poisson_schedule(rate: float, *, count: int, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in seconds from the start (increasing): a Poisson process of `rate` per second, cut at
    `count` arrivals or `duration_s`, whichever comes first. The first arrival is at its own random time."""
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be within (0, {MAX_RATE:g}] per second")
    check_bounds(count, duration_s)
    times = np.cumsum(rng.exponential(1.0 / rate, size=count))
    return times[times < duration_s]


def run_closed_loop(
    send: Send,
    concurrency: int,
    *,
    count: int,
    duration_s: float,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> StepRun:
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}")
    check_bounds(count, duration_s)
    send = _guarded(send)
    stop = stop or threading.Event()
    run = StepRun()
    lock = threading.Lock()
    issued = 0
    start = clock()
    deadline = start + duration_s
    last_done = start

    def worker() -> None:
        nonlocal issued, last_done
        while not stop.is_set():
            with lock:
                if issued >= count or clock() >= deadline:
                    return
                index = issued
                issued += 1
            outcome = send(index)
            with lock:
                run.outcomes.append(outcome)
                last_done = max(last_done, clock())

    threads = [threading.Thread(target=worker, name=f"loadtest-closed-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:  # no stop handler installed (a bare call): stop as a signal would
        stop.set()
        for t in threads:
            t.join()
    run.stopped = stop.is_set()
    run.wall_s = last_done - start
    return run


def run_open_loop(
    send: Send,
    rate: float,
    *,
    count: int,
    duration_s: float,
    max_inflight: int,
    rng: np.random.Generator,
    late_after_s: float = 0.1,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StepRun:
    if not 1 <= max_inflight <= MAX_CONCURRENCY:
        raise ValueError(f"max in flight must be 1..{MAX_CONCURRENCY}")
    schedule = poisson_schedule(rate, count=count, duration_s=duration_s, rng=rng)
    send = _guarded(send)
    stop = stop or threading.Event()
    run = StepRun()
    lock = threading.Lock()
    slots = threading.BoundedSemaphore(max_inflight)
    start = clock()
    last_done = start

    def one(index: int, scheduled: float) -> None:
        nonlocal last_done
        try:
            delay = max(0.0, clock() - scheduled)
            outcome = send(index)
            outcome.start_delay_s = delay
            outcome.latency_s += delay  # from the scheduled arrival
            with lock:
                run.outcomes.append(outcome)
                if delay > late_after_s:
                    run.late += 1
                last_done = max(last_done, clock())
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="loadtest-open") as pool:
        try:
            for index, offset in enumerate(schedule):
                scheduled = start + float(offset)
                while not stop.is_set() and (wait := scheduled - clock()) > 0:
                    sleep(min(wait, 0.25))  # wakes to look at `stop` on long gaps
                if stop.is_set():
                    break
                if not slots.acquire(blocking=False):
                    run.dropped += 1
                    continue
                pool.submit(one, index, scheduled)
        except KeyboardInterrupt:
            stop.set()
    run.stopped = stop.is_set()
    run.wall_s = last_done - start
    return run
