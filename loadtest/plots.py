"""The report's PNG plots (matplotlib's object API, `Figure` drawn by the Agg renderer: no display, no pyplot state).

`plot_report(report, out_dir)` writes, for the steps the report holds:

* `closed_loop.png`: images/s, latency p50/p95/p99 and (with Triton's statistics) the mean queue and compute
  time per request, against concurrency;
* `open_loop.png`: the same against the realized offered rate (arrivals / arrival window, each point labelled
  with its nominal rate), throughput over the arrival window, with the achieved = offered line;
* `batch_sizes.png`: Triton's batch-size histogram (executions by batch size), one group of bars per step
  (only when the report has Triton statistics).

A value the step does not have (no successful request; p95 under 20 and p99 under 100 of them, as the table
shows them; statistics missing) is plotted as a gap (NaN) and the step annotated, never as 0. An overloaded
step (report.py: arrivals late or unanswered) and a step with failures are marked in red with their
counts. The folder is made private (0700) and each PNG written 0600.

Returns the paths written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from faceharmony.core.datadir import private_dir
from faceharmony.loadtest.report import P95_FROM, P99_FROM, shown_latency, step_label

_QUANTILES = (("p50", "o-"), ("p95", "s--"), ("p99", "^:"))


def _title(report: Mapping[str, Any]) -> str:
    return f"{report['target']} · {report['settings']['summary']}"


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _save(fig: Figure, path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    os.chmod(path, 0o600)  # an older file of the same name keeps its mode otherwise
    return path


def _note(ax, x: float, text: str, *, color: str = "grey") -> None:
    """`text` at the foot of the step at `x` (outside the layout: a note never squeezes the axes)."""
    note = ax.annotate(
        text,
        (x, 0),
        annotation_clip=False,
        xycoords=("data", "axes fraction"),
        xytext=(0, 4),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=7,
        color=color,
        rotation=90,
    )
    note.set_in_layout(False)


def _step_notes(step: Mapping[str, Any]) -> str:
    notes = []
    if step.get("overloaded"):
        notes.append(f"OVERLOADED ({step.get('late', 0)}/{step.get('arrivals', 0)} late)")
    if step["failed"]:
        notes.append(f"{step['failed']} failed")
    return ", ".join(notes)


def _sweep_figure(report: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], key: str, path: Path) -> Path:
    open_loop = key == "rate"
    xs = [_nan(s.get("realized_rate")) if open_loop else float(s[key]) for s in steps]
    xs = [x if not math.isnan(x) else float(s[key]) for x, s in zip(xs, steps)]  # no arrival: the nominal rate
    with_triton = any(s.get("triton") for s in steps)
    fig = Figure(figsize=(16 if with_triton else 11, 4.6), layout="constrained")
    axes = fig.subplots(1, 3 if with_triton else 2)
    ax_t, ax_l = axes[0], axes[1]
    throughput = [_nan(s["images_per_s"]) for s in steps]
    ax_t.plot(
        xs, throughput, "o-", color="tab:blue", label="achieved (over the arrival window)" if open_loop else "achieved"
    )
    if open_loop:
        top = max([x for x in xs if not math.isnan(x)] + [1e-9])
        ax_t.plot([0, top * 1.1], [0, top * 1.1], ":", color="grey", label="achieved = offered")
        ax_t.set_xlabel("offered rate, realized (arrivals / arrival window, per s)")
        ax_t.set_xlim(0, top * 1.25)
        for x, y, s in zip(xs, throughput, steps):
            ax_t.annotate(
                f"nominal {s['rate']:g}/s",
                (x, 0 if math.isnan(y) else y),
                xytext=(4, -10),
                textcoords="offset points",
                fontsize=7,
                color="grey",
            )
    else:
        ax_t.set_xlabel("concurrency (requests in flight)")
    ax_t.set_ylabel("images/s")
    ax_t.set_ylim(bottom=0)
    if not open_loop:
        ax_t.set_xlim(left=0)
    ax_t.set_title("throughput")
    ax_t.grid(alpha=0.3)
    for x, y, s in zip(xs, throughput, steps):
        if math.isnan(y):
            _note(ax_t, x, "no answer")
        if note := _step_notes(s):
            ax_t.annotate(
                note,
                (x, 0 if math.isnan(y) else y),
                xytext=(4, 6),
                textcoords="offset points",
                fontsize=7,
                color="tab:red",
            )
            if not math.isnan(y):
                ax_t.plot([x], [y], "o", color="tab:red", markersize=9, fillstyle="none")
    ax_t.legend(fontsize=8)
    shown = [shown_latency(s["latency_ms"]) for s in steps]
    for q, style in _QUANTILES:
        values = [_nan(v[q]) for v in shown]
        least = {"p95": P95_FROM, "p99": P99_FROM}.get(q)
        hidden = least and all(math.isnan(v) for v in values)
        ax_l.plot(xs, values, style, label=f"{q} (not shown under n={least})" if hidden else q)
    for x, s, v in zip(xs, steps, shown):
        n = int(s["latency_ms"].get("n") or 0)
        missing = [q for q, _ in _QUANTILES if v[q] is None]
        label = f"n={n}" + (f", no {'/'.join(missing)}" if missing else "")
        _note(ax_l, x, label, color="tab:red" if s["failed"] or s.get("overloaded") else "grey")
    ax_l.set_xlabel(ax_t.get_xlabel())
    ax_l.set_ylabel("latency (ms)")
    ax_l.set_ylim(bottom=0)
    ax_l.set_title("latency of successful requests" + (" (from scheduled arrival)" if open_loop else ""))
    ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=8)
    if with_triton:
        ax_q = axes[2]
        labels = [step_label(s).split(" ", 1)[1] for s in steps]
        triton = [s.get("triton") or {} for s in steps]
        queue = [_nan(t.get("queue_ms_mean")) for t in triton]
        compute = [_nan(t.get("compute_infer_ms_mean")) for t in triton]
        ax_q.bar(labels, queue, label="queue (waiting for a batch/instance)", color="tab:orange")
        bottoms = [0.0 if math.isnan(q) else q for q in queue]
        ax_q.bar(labels, compute, bottom=bottoms, label="compute (the batch's execution)", color="tab:blue")
        for i, (t, s) in enumerate(zip(triton, steps)):
            if "error" in t or not t:
                _note(ax_q, i, f"no statistics: {t.get('error', 'none')}", color="tab:red")
            elif t.get("queue_ms_mean") is None:
                _note(ax_q, i, "no requests counted")
            elif s.get("statistics_incomplete"):
                _note(ax_q, i, "statistics incomplete", color="tab:red")
        totals = [q + c for q, c in zip(bottoms, compute) if not math.isnan(c)]
        ax_q.set_ylim(0, (max(totals) * 1.4 if totals else 0) or 1)  # room for the legend
        ax_q.set_xlabel("step")
        ax_q.set_ylabel("mean per request (ms)")
        ax_q.set_title("Triton: queue vs compute time")
        ax_q.grid(axis="y", alpha=0.3)
        ax_q.legend(fontsize=8)
    if not open_loop:
        for ax in (ax_t, ax_l):
            ax.set_xticks(xs)
    fig.suptitle(_title(report))
    return _save(fig, path)


def _batch_figure(report: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], path: Path) -> Path:
    sizes = sorted({int(bs) for s in steps for bs in (s.get("triton") or {}).get("batch_histogram", {})})
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(steps))
    for i, step in enumerate(steps):
        hist = step["triton"].get("batch_histogram") or {}
        xs = [bs + (i - (len(steps) - 1) / 2) * width for bs in sizes]
        ax.bar(xs, [hist.get(str(bs), 0) for bs in sizes], width=width, label=step_label(step))
    ax.set_xticks(sizes)
    ax.set_xlabel("Triton batch size (requests in one execution)")
    ax.set_ylabel("executions")
    ax.set_title("batch sizes (Triton statistics, diffed over each step)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.suptitle(_title(report))
    return _save(fig, path)


def plot_report(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    out_dir = private_dir(Path(out_dir))
    steps = report["steps"]
    closed = [s for s in steps if s["mode"] == "closed"]
    opened = [s for s in steps if s["mode"] == "open"]
    written = []
    if closed:
        written.append(_sweep_figure(report, closed, "concurrency", out_dir / "closed_loop.png"))
    if opened:
        written.append(_sweep_figure(report, opened, "rate", out_dir / "open_loop.png"))
    with_batches = [s for s in steps if (s.get("triton") or {}).get("batch_histogram")]
    if with_batches:
        written.append(_batch_figure(report, with_batches, out_dir / "batch_sizes.png"))
    return written
