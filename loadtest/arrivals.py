"""The load drivers: a closed loop (fixed concurrency) and an open loop (Poisson arrivals at a target rate).

A driver calls `send(index)` (a target's request, made from its index: the target picks the model, the prompt
and the seed) on threads and collects the `Outcome`s. Both are bounded and stop by themselves: no request is
started after `count` were started or `duration_s` passed, and the driver then waits for those in flight (each
bounded by its target's own timeout). A `Control` is what the drivers share with the command line: `stop` (the
process's SIGINT/SIGTERM) ends a step early the same way, `abandon` (a second Ctrl-C) stops waiting for the
requests in flight (the step returns what was answered; the caller closes the clients), and `in_flight` says
how many requests are out.

* `run_closed_loop(send, concurrency, ...)`: `concurrency` threads, each sending its next request as soon as
  its last one is answered.
* `run_open_loop(send, rate, ...)`: arrivals at the times of `poisson_schedule` (exponential gaps of mean
  1/rate, from a seeded generator), whatever the answers do. At most `max_inflight` requests are in flight:
  an arrival that finds them all busy waits in a queue (bounded by `count`) for a slot, never dropped. Every
  latency runs from the request's scheduled arrival, so the wait is in it (no coordinated omission); one sent
  more than `late_after_s` after its scheduled time (waiting for a slot, or the dispatcher behind) is counted
  late, and `queued` counts the arrivals that found every slot busy. The step's arrival window is from its
  start to its last scheduled arrival (report.py: the realized rate and the throughput over it).
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
_POLL_S = 0.1  # how often a waiting driver looks at `abandon`


class Control:
    """Shared by a run's drivers and the command line: `stop`, `abandon` and the count of requests in flight."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop if stop is not None else threading.Event()
        self.abandon = threading.Event()
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _moved(self, by: int) -> None:
        with self._lock:
            self._in_flight += by


@dataclass
class StepRun:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0  # from the start to the last answer
    arrivals: int = 0  # open loop: arrivals dispatched (sent or queued for a slot)
    arrival_window_s: float = 0.0  # open loop: from the start to the last scheduled arrival
    queued: int = 0  # open loop: arrivals that found every slot busy and waited
    late: int = 0
    abandoned: int = 0  # requests still in flight when a second Ctrl-C stopped the waiting
    stopped: bool = False  # ended by `stop`, not by its bounds


def _guarded(send: Send, control: Control) -> Send:
    """`send` that never raises (a target's own bug is counted under its exception's name, not lost) and is
    counted in flight while it runs."""

    def call(index: int) -> Outcome:
        t0 = time.monotonic()
        control._moved(1)
        try:
            return send(index)
        except Exception as exc:  # noqa: BLE001 - one broken request must not end the step
            return Outcome(ok=False, latency_s=time.monotonic() - t0, reason=f"CLIENT_{type(exc).__name__}")
        finally:
            control._moved(-1)

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


def _control(control: Control | None, stop: threading.Event | None) -> Control:
    if control is None:
        return Control(stop)
    if stop is not None and stop is not control.stop:
        raise ValueError("give `stop` or a `control`, not both")
    return control


def run_closed_loop(
    send: Send,
    concurrency: int,
    *,
    count: int,
    duration_s: float,
    stop: threading.Event | None = None,
    control: Control | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> StepRun:
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}")
    check_bounds(count, duration_s)
    control = _control(control, stop)
    stop = control.stop
    send = _guarded(send, control)
    run = StepRun()
    lock = threading.Lock()
    issued = 0
    start = clock()
    deadline = start + duration_s
    last_done = start
    outcomes = run.outcomes

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
                now = clock()
                outcome.finished_s = now - start
                outcomes.append(outcome)
                last_done = max(last_done, now)

    threads = [threading.Thread(target=worker, name=f"loadtest-closed-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    _wait(lambda: any(t.is_alive() for t in threads), control, lambda: _join(threads))
    with lock:
        run.outcomes = list(outcomes)
        run.abandoned = issued - len(outcomes)
        run.wall_s = last_done - start
    run.stopped = stop.is_set()
    return run


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(_POLL_S)


def _wait(busy: Callable[[], bool], control: Control, step: Callable[[], object]) -> None:
    """Waits while `busy()`, one `step()` at a time, until `control.abandon`; Ctrl-C without a stop handler
    installed (a bare call) sets `stop` once and `abandon` the second time, as the command line's does."""
    while busy() and not control.abandon.is_set():
        try:
            step()
        except KeyboardInterrupt:
            (control.abandon if control.stop.is_set() else control.stop).set()


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
    control: Control | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StepRun:
    if not 1 <= max_inflight <= MAX_CONCURRENCY:
        raise ValueError(f"max in flight must be 1..{MAX_CONCURRENCY}")
    schedule = poisson_schedule(rate, count=count, duration_s=duration_s, rng=rng)
    control = _control(control, stop)
    stop = control.stop
    send = _guarded(send, control)
    run = StepRun()
    lock = threading.Lock()
    start = clock()
    last_done = start
    pending = 0  # dispatched and not yet answered (in flight or waiting for a slot)
    outcomes = run.outcomes

    def one(index: int, scheduled: float) -> None:
        nonlocal last_done, pending
        try:
            if stop.is_set():
                return  # queued behind a stop: never sent (counted unanswered)
            delay = max(0.0, clock() - scheduled)
            outcome = send(index)
            outcome.start_delay_s = delay
            outcome.latency_s += delay  # from the scheduled arrival
            with lock:
                now = clock()
                outcome.finished_s = now - start
                outcomes.append(outcome)
                if delay > late_after_s:
                    run.late += 1
                last_done = max(last_done, now)
        finally:
            with lock:
                pending -= 1

    pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="loadtest-open")
    try:
        for index, offset in enumerate(schedule):
            scheduled = start + float(offset)
            while not stop.is_set() and (wait := scheduled - clock()) > 0:
                sleep(min(wait, 0.25))  # wakes to look at `stop` on long gaps
            if stop.is_set():
                break
            with lock:
                if pending >= max_inflight:
                    run.queued += 1
                pending += 1
            run.arrivals += 1
            run.arrival_window_s = float(offset)
            pool.submit(one, index, scheduled)
    except KeyboardInterrupt:
        stop.set()
    _wait(lambda: pending > 0, control, lambda: control.abandon.wait(_POLL_S))
    pool.shutdown(wait=False, cancel_futures=True)
    with lock:
        run.outcomes = list(outcomes)
        run.abandoned = control.in_flight if pending else 0
        run.wall_s = last_done - start
    run.stopped = stop.is_set()
    return run
