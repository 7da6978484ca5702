"""One load test: warm-up, then each step of the sweep (concurrencies, then offered rates), into one report.

`run_sweep(target, plan, control)` takes any target with `send(index) -> Outcome` (triton_target.py,
orders_target.py). The warm-up is the target's `warm_up(first_index, control, duration_s)` when it has one
(Triton: every model once, concurrently, within `--duration`; orders: one order per user), then `plan.warmup`
requests; neither is counted. With `stats` (triton_target.TritonStatistics) Triton's statistics are diffed over
each step (report.triton_diff): for the orders target too, where they also count whatever else the system's
Triton served meanwhile. Statistics that cannot be read are the step's `triton: {"error": ...}`, and a step
whose statistics did not settle (triton_target: `wait_statistics`) is flagged `statistics_incomplete`.
Request indexes run on across the warm-up and the steps, so no two requests of a run share a seed. A step
ended by `control.stop` (Ctrl-C, SIGTERM) is reported as it stands and the sweep ends there; an exception
inside the sweep (the target gone away in a way its requests do not absorb) ends it too, with the steps
measured so far and the report's `error`.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from faceharmony.loadtest.arrivals import Control, StepRun, run_closed_loop, run_open_loop
from faceharmony.loadtest.report import REPORT_KIND, REPORT_VERSION, Outcome, summarize_step, triton_diff


class Target(Protocol):
    def send(self, index: int) -> Outcome: ...


@dataclass
class Plan:
    concurrencies: Sequence[int] = field(default_factory=list)
    rates: Sequence[float] = field(default_factory=list)
    count: int = 20  # requests per step at most
    duration_s: float = 60.0  # seconds per step at most (and for the target's warm-up)
    warmup: int = 2  # requests before the first step, not counted
    max_inflight: int = 16  # open loop
    late_after_s: float = 0.1  # open loop
    seed: int = 0


class _Indexed:
    """Hands each request of the run its own index."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.next = 0
        self._lock = threading.Lock()

    def send(self, _step_index: int) -> Outcome:
        with self._lock:
            index, self.next = self.next, self.next + 1
        return self.target.send(index)


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()}


class Statistics(Protocol):
    def statistics(self) -> dict[str, Any]: ...
    def wait_statistics(self, before: dict[str, Any], succeeded: int) -> tuple[dict[str, Any], bool]: ...


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}".rstrip(": ")


def run_sweep(
    target: Target,
    plan: Plan,
    *,
    control: Control | None = None,
    stop: threading.Event | None = None,
    meta: dict[str, Any],
    stats: Statistics | None = None,
) -> dict[str, Any]:
    """The report (JSON-ready): `meta` (target, url, settings, ...) plus `steps`; with `stats` (Triton's),
    each step's statistics diff."""
    if not plan.concurrencies and not plan.rates:
        raise ValueError("nothing to drive: give a concurrency or a rate")
    control = control or Control(stop)
    stop = control.stop
    indexed = _Indexed(target)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    steps: list[dict[str, Any]] = []
    warmed: list[Outcome] = []
    warmup = StepRun()
    error = None
    try:
        baseline = stats.statistics() if stats else None
        warm_up = getattr(target, "warm_up", None)  # the target's own (Triton: every model once)
        warmed = warm_up(0, control, plan.duration_s) if warm_up else []
        indexed.next = len(warmed)
        if plan.warmup > 0 and not stop.is_set():
            concurrency = max(1, min(plan.warmup, max([*plan.concurrencies, 1])))
            warmup = run_closed_loop(
                indexed.send, concurrency, count=plan.warmup, duration_s=plan.duration_s, control=control
            )
        if stats is not None and baseline is not None:  # the warm-up's executions counted before step 1's "before"
            stats.wait_statistics(baseline, sum(o.images for o in [*warmed, *warmup.outcomes] if o.ok))
        levels: list[dict[str, Any]] = [{"mode": "closed", "concurrency": c} for c in plan.concurrencies]
        levels += [{"mode": "open", "rate": r, "max_inflight": plan.max_inflight} for r in plan.rates]
        for n, level in enumerate(levels):
            if stop.is_set():
                break
            steps.append(_step(indexed, plan, n, level, control, stats))
    except Exception as exc:  # noqa: BLE001 - the report of what was measured is still written
        error = _error(exc)
    return {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "started": started,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **meta,
        "plan": asdict(plan) | {"concurrencies": list(plan.concurrencies), "rates": list(plan.rates)},
        "warmup": {
            "requests": len(warmed) + len(warmup.outcomes),
            "succeeded": sum(1 for o in [*warmed, *warmup.outcomes] if o.ok),
        },
        "steps": steps,
        "stopped": stop.is_set(),
        "abandoned": control.abandon.is_set(),
        "error": error,
    }


def _step(
    indexed: _Indexed, plan: Plan, n: int, level: dict[str, Any], control: Control, stats: Statistics | None
) -> dict[str, Any]:
    before = stats.statistics() if stats else None
    if level["mode"] == "closed":
        run = run_closed_loop(
            indexed.send, level["concurrency"], count=plan.count, duration_s=plan.duration_s, control=control
        )
    else:
        run = run_open_loop(
            indexed.send,
            level["rate"],
            count=plan.count,
            duration_s=plan.duration_s,
            max_inflight=plan.max_inflight,
            rng=np.random.default_rng([plan.seed, n]),
            late_after_s=plan.late_after_s,
            control=control,
        )
    diff = None
    settled = True
    if stats is not None and before is not None:
        images = sum(o.images for o in run.outcomes if o.ok)  # one Triton request per image
        if control.abandon.is_set():  # not waited for: what Triton counted so far
            after, settled = stats.statistics(), False
        else:
            after, settled = stats.wait_statistics(before, images)
        diff = triton_diff(before, after)
    open_loop = level["mode"] == "open"
    summary = summarize_step(
        level,
        run.outcomes,
        run.wall_s,
        arrivals=run.arrivals if open_loop else None,
        arrival_window_s=run.arrival_window_s if open_loop else None,
        late=run.late,
        triton=diff,
    )
    if open_loop:
        summary["queued"] = run.queued
    summary["stopped"] = run.stopped
    summary["abandoned"] = run.abandoned
    if not settled:
        summary["statistics_incomplete"] = True
    return summary
