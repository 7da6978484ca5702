"""From outcomes to figures: one step's summary, Triton's statistics diffed over it, the JSON report, the table.

Owns:

* `Outcome`: what one request came to (ok or an error reason, its latency, images it produced and how many of
  them opened with their key, how late it was sent behind its schedule);
* `percentiles(values)`: p50/p95/p99 (numpy's linear interpolation), mean and max; None where there are no values;
* `summarize_step(...)`: one step of a sweep (a concurrency, or an offered rate) as a dict: requests,
  succeeded and failed (errors by reason, deadlines included), images, images/s, latency percentiles in ms of
  the successful requests with their `n`, and `triton` (below). Closed loop: images/s over the step's wall
  time (first send to last answer). Open loop: `arrivals`, the `arrival_window_s` (step start to the last
  scheduled arrival), the realized offered rate (arrivals / window), images/s of the requests answered within
  that window (the drain after it is not counted; `images_per_s_wall` is over the whole wall time), late
  arrivals (sent more than `late_after_s` behind their schedule: waiting for a slot of `--max-inflight`, or a
  dispatcher behind) and `overloaded` (more than 5 % of arrivals late, or any unanswered);
* `triton_diff(before, after)`: Triton's statistics of the model (`get_inference_statistics`, as JSON) after a
  step minus before it: successful and failed requests, executions, the mean queue time and the mean
  compute time (input, infer, output) per request, and the batch-size histogram (executions by batch size,
  from `batch_stats[].compute_infer.count`);
* `write_json(path, report)` and `render_table(report)` (a rich table, one row per step; p99 shown from 100
  successful requests, p95 from 20, "-" below: the JSON keeps them with `n`).

Latency is measured from a request's intended start: in a closed loop when it was sent, in an open loop its
scheduled arrival, so an open loop that falls behind (arrivals queue for a slot, never dropped) shows it in
its latency (no coordinated omission). The percentiles cover the successful requests only; the failed ones
stand beside them (n ok / n failed, errors by reason).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceharmony.core.datadir import private_dir

QUANTILES = (50, 95, 99)
REPORT_KIND = "faceharmony-loadtest-report"
REPORT_VERSION = 2
P95_FROM = 20  # successful requests before the table shows a p95
P99_FROM = 100  # ... and a p99
LATE_SHARE_OVERLOADED = 0.05  # an open-loop step with more late arrivals than this is flagged overloaded


@dataclass
class Outcome:
    ok: bool
    latency_s: float
    reason: str = ""  # the error's reason when not ok (a gRPC status name, CIPHERTEXT_INVALID, ...)
    images: int = 0  # images the request produced
    opened: int = 0  # of those, how many opened with their data key (and had the requested size)
    start_delay_s: float = 0.0  # open loop: how long after its scheduled arrival it was sent
    finished_s: float | None = None  # when it was answered, seconds from the step's start (drivers set it)


def percentiles(values: Iterable[float], quantiles: Sequence[int] = QUANTILES) -> dict[str, float | None]:
    arr = np.asarray(list(values), dtype=np.float64)
    out: dict[str, float | None] = {}
    for q in quantiles:
        out[f"p{q}"] = float(np.percentile(arr, q)) if arr.size else None
    out["mean"] = float(arr.mean()) if arr.size else None
    out["max"] = float(arr.max()) if arr.size else None
    return out


def _int(value: Any) -> int:
    return int(value or 0)  # Triton's JSON writes its uint64 counters as strings


def _duration(stats: Mapping[str, Any], name: str) -> tuple[int, int]:
    d = stats.get(name) or {}
    return _int(d.get("count")), _int(d.get("ns"))


def _batch_executions(model_stats: Mapping[str, Any]) -> dict[int, int]:
    return {_int(b.get("batch_size")): _duration(b, "compute_infer")[0] for b in model_stats.get("batch_stats") or []}


def triton_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """`before` and `after`: one model's entry of `get_inference_statistics(..., as_json=True)["model_stats"]`,
    or `{"error": reason}` where the statistics could not be read (then the diff is that error)."""
    for side in (before, after):
        if "error" in side:
            return {"error": side["error"]}
    inf_b, inf_a = before.get("inference_stats") or {}, after.get("inference_stats") or {}

    def diff(name: str) -> tuple[int, int]:
        (cb, nb), (ca, na) = _duration(inf_b, name), _duration(inf_a, name)
        return ca - cb, na - nb

    success, _ = diff("success")
    failed, _ = diff("fail")
    means = {}
    for name in ("queue", "compute_input", "compute_infer", "compute_output"):
        count, ns = diff(name)
        means[f"{name}_ms_mean"] = ns / count / 1e6 if count else None
    hist_b, hist_a = _batch_executions(before), _batch_executions(after)
    histogram = {bs: n - hist_b.get(bs, 0) for bs, n in sorted(hist_a.items()) if n - hist_b.get(bs, 0) > 0}
    executions = _int(after.get("execution_count")) - _int(before.get("execution_count"))
    return {
        "requests_success": success,
        "requests_failed": failed,
        "inferences": _int(after.get("inference_count")) - _int(before.get("inference_count")),
        "executions": executions,
        **means,
        "batch_histogram": {str(bs): n for bs, n in histogram.items()},
        "mean_batch_size": (sum(bs * n for bs, n in histogram.items()) / sum(histogram.values()))
        if histogram
        else None,
    }


def summarize_step(
    step: Mapping[str, Any],
    outcomes: Sequence[Outcome],
    wall_s: float,
    *,
    arrivals: int | None = None,
    arrival_window_s: float | None = None,
    late: int = 0,
    triton: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`step`: what was driven, e.g. {"mode": "closed", "concurrency": 4} or {"mode": "open", "rate": 0.5};
    `arrivals` and `arrival_window_s` for an open-loop step."""
    ok = [o for o in outcomes if o.ok]
    images = sum(o.images for o in ok)
    errors = Counter(o.reason or "UNKNOWN" for o in outcomes if not o.ok)
    latency: dict[str, Any] = {
        k: (v * 1000 if v is not None else None) for k, v in percentiles(o.latency_s for o in ok).items()
    }
    latency["n"] = len(ok)
    summary: dict[str, Any] = {
        **step,
        "requests": len(outcomes),
        "succeeded": len(ok),
        "failed": len(outcomes) - len(ok),
        "images": images,
        "images_opened": sum(o.opened for o in ok),
        "wall_s": wall_s,
        "images_per_s": images / wall_s if wall_s > 0 else None,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else None,
        "latency_ms": latency,
        "errors": dict(sorted(errors.items())),
    }
    if step.get("mode") == "open":
        window = arrival_window_s or 0.0
        arrived = len(outcomes) if arrivals is None else arrivals
        within = [o for o in ok if o.finished_s is not None and o.finished_s <= window]
        delays = percentiles(o.start_delay_s for o in outcomes)
        summary |= {
            "throughput_over": "arrival window",
            "images_per_s": sum(o.images for o in within) / window if window > 0 else None,
            "requests_per_s": len(within) / window if window > 0 else None,
            "images_per_s_wall": images / wall_s if wall_s > 0 else None,
            "arrivals": arrived,
            "arrival_window_s": window,
            "realized_rate": arrived / window if window > 0 else None,
            "answered_in_window": len(within),
            "late": late,
            "unanswered": arrived - len(outcomes),
            "start_delay_ms": {k: (v * 1000 if v is not None else None) for k, v in delays.items()},
        }
        summary["overloaded"] = bool(summary["unanswered"] > 0 or (arrived and late > LATE_SHARE_OVERLOADED * arrived))
    if triton is not None:
        summary["triton"] = dict(triton)
    return summary


def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    path = Path(path)
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(report, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def step_label(step: Mapping[str, Any]) -> str:
    if step.get("mode") == "open":
        return f"open {step['rate']:g}/s"
    return f"closed c={step['concurrency']}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def shown_latency(latency: Mapping[str, Any]) -> dict[str, float | None]:
    """p50/p95/p99 as the table and plots show them: p95 from P95_FROM successful requests, p99 from P99_FROM."""
    n = int(latency.get("n") or 0)
    return {
        "p50": latency.get("p50"),
        "p95": latency.get("p95") if n >= P95_FROM else None,
        "p99": latency.get("p99") if n >= P99_FROM else None,
    }


def _flags(step: Mapping[str, Any]) -> str:
    flags = []
    if step.get("overloaded"):
        flags.append(f"OVERLOADED: {step.get('late', 0)} of {step.get('arrivals', 0)} late")
        if step.get("unanswered"):
            flags.append(f"{step['unanswered']} unanswered")
    elif step.get("mode") == "open" and step.get("late"):
        flags.append(f"{step['late']} late")
    triton = step.get("triton") or {}
    if "error" in triton:
        flags.append(f"Triton statistics: {triton['error']}")
    if step.get("statistics_incomplete"):
        flags.append("Triton statistics incomplete")
    if step.get("stopped"):
        flags.append("stopped")
    return "; ".join(flags)


def render_table(report: Mapping[str, Any]):
    """A rich Table of the report's steps."""
    from rich.table import Table

    table = Table(title=f"faceharmony-loadtest: {report['target']} ({report['settings']['summary']})")
    columns = ("step", "offered/s", "img/s", "n ok", "failed", "p50 ms", "p95 ms", "p99 ms", "queue ms")
    for column in (*columns, "compute ms", "batches"):
        table.add_column(column, justify="left" if column == "step" else "right")
    table.add_column("errors")
    table.add_column("flags")
    for step in report["steps"]:
        lat = shown_latency(step["latency_ms"])
        triton = step.get("triton") or {}
        hist = triton.get("batch_histogram") or {}
        offered = step.get("realized_rate")
        table.add_row(
            step_label(step),
            "-" if offered is None else f"{offered:.2f}",
            "-" if step["images_per_s"] is None else f"{step['images_per_s']:.2f}",
            str(step["succeeded"]),
            str(step["failed"]),
            _ms(lat["p50"]),
            _ms(lat["p95"]),
            _ms(lat["p99"]),
            _ms(triton.get("queue_ms_mean")),
            _ms(triton.get("compute_infer_ms_mean")),
            " ".join(f"{bs}x{n}" for bs, n in hist.items()) or "-",
            ", ".join(f"{k} {v}" for k, v in step["errors"].items()) or "-",
            _flags(step) or "-",
            style="bold red" if step.get("overloaded") or step["failed"] else None,
        )
    return table
