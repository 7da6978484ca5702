"""One load test: warm-up, then each step of the sweep (concurrencies, then offered rates), into one report.

`run_sweep(target, plan, stop)` takes any target with `send(index) -> Outcome` (triton_target.py,
orders_target.py). The warm-up is the target's `warm_up(first_index, stop)` when it has one (Triton: every model
once), then `plan.warmup` requests; neither is counted. With `stats` (triton_target.TritonStatistics) Triton's
statistics are diffed over each step (report.triton_diff): for the orders target too, where they also count
whatever else the system's Triton served meanwhile. Request indexes run on across the warm-up and the steps, so no two
requests of a run share a seed. A step ended by `stop` (Ctrl-C, SIGTERM) is reported as it stands and the
sweep ends there.
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

from faceharmony.loadtest.arrivals import StepRun, run_closed_loop, run_open_loop
from faceharmony.loadtest.report import REPORT_KIND, REPORT_VERSION, Outcome, summarize_step, triton_diff


class Target(Protocol):
    def send(self, index: int) -> Outcome: ...


@dataclass
class Plan:
    concurrencies: Sequence[int] = field(default_factory=list)
    rates: Sequence[float] = field(default_factory=list)
    count: int = 20  # requests per step at most
    duration_s: float = 60.0  # seconds per step at most
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
    def wait_statistics(self, before: dict[str, Any], succeeded: int) -> dict[str, Any]: ...


def run_sweep(
    target: Target, plan: Plan, *, stop: threading.Event, meta: dict[str, Any], stats: Statistics | None = None
) -> dict[str, Any]:
    """The report (JSON-ready): `meta` (target, url, settings, ...) plus `steps`; with `stats` (Triton's),
    each step's statistics diff."""
    if not plan.concurrencies and not plan.rates:
        raise ValueError("nothing to drive: give a concurrency or a rate")
    indexed = _Indexed(target)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    baseline = stats.statistics() if stats else None
    warm_up = getattr(target, "warm_up", None)  # the target's own (Triton: every model once)
    warmed: list[Outcome] = warm_up(0, stop) if warm_up else []
    indexed.next = len(warmed)
    warmup = (
        run_closed_loop(
            indexed.send,
            max(1, min(plan.warmup, max([*plan.concurrencies, 1]))),
            count=plan.warmup,
            duration_s=plan.duration_s,
            stop=stop,
        )
        if plan.warmup > 0
        else StepRun()
    )
    if stats is not None and baseline is not None:  # the warm-up's executions are counted before step 1's "before"
        stats.wait_statistics(baseline, sum(o.images for o in [*warmed, *warmup.outcomes] if o.ok))
    steps: list[dict[str, Any]] = []
    levels: list[dict[str, Any]] = [{"mode": "closed", "concurrency": c} for c in plan.concurrencies]
    levels += [{"mode": "open", "rate": r, "max_inflight": plan.max_inflight} for r in plan.rates]
    for n, level in enumerate(levels):
        if stop.is_set():
            break
        before = stats.statistics() if stats else None
        if level["mode"] == "closed":
            run = run_closed_loop(
                indexed.send, level["concurrency"], count=plan.count, duration_s=plan.duration_s, stop=stop
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
                stop=stop,
            )
        diff = None
        if stats is not None and before is not None:
            images = sum(o.images for o in run.outcomes if o.ok)  # one Triton request per image
            diff = triton_diff(before, stats.wait_statistics(before, images))
        summary = summarize_step(level, run.outcomes, run.wall_s, dropped=run.dropped, late=run.late, triton=diff)
        summary["stopped"] = run.stopped
        steps.append(summary)
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
    }
