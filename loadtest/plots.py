"""The report's PNG plots (matplotlib's object API, `Figure` drawn by the Agg renderer: no display, no pyplot state).

`plot_report(report, out_dir)` writes, for the steps the report holds:

* `closed_loop.png`: images/s, latency p50/p95/p99 and (with Triton's statistics) the mean queue and compute
  time per request, against concurrency;
* `open_loop.png`: the same against offered rate, with the ideal (offered = achieved) line;
* `batch_sizes.png`: Triton's batch-size histogram (executions by batch size), one group of bars per step
  (only when the report has Triton statistics).

Returns the paths written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from faceharmony.loadtest.report import step_label

_QUANTILES = (("p50", "o-"), ("p95", "s--"), ("p99", "^:"))


def _title(report: Mapping[str, Any]) -> str:
    return f"{report['target']} · {report['settings']['summary']}"


def _sweep_figure(report: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], key: str, path: Path) -> Path:
    xs = [s[key] for s in steps]
    with_triton = all(s.get("triton") for s in steps)
    fig = Figure(figsize=(16 if with_triton else 11, 4.2), layout="constrained")
    axes = fig.subplots(1, 3 if with_triton else 2)
    ax_t, ax_l = axes[0], axes[1]
    ax_t.plot(xs, [s["images_per_s"] or 0 for s in steps], "o-", color="tab:blue", label="achieved")
    if key == "rate":
        ax_t.plot(xs, xs, ":", color="grey", label="offered (ideal)")
        ax_t.set_xlabel("offered rate (requests/s)")
    else:
        ax_t.set_xlabel("concurrency (requests in flight)")
    ax_t.set_ylabel("images/s")
    ax_t.set_ylim(bottom=0)
    ax_t.set_title("throughput")
    ax_t.grid(alpha=0.3)
    ax_t.legend()
    for q, style in _QUANTILES:
        ax_l.plot(xs, [s["latency_ms"][q] or 0 for s in steps], style, label=q)
    ax_l.set_xlabel(ax_t.get_xlabel())
    ax_l.set_ylabel("latency (ms)")
    ax_l.set_ylim(bottom=0)
    ax_l.set_title("latency of successful requests")
    ax_l.grid(alpha=0.3)
    ax_l.legend()
    if with_triton:
        ax_q = axes[2]
        labels = [f"{x:g}" for x in xs]
        queue = [s["triton"]["queue_ms_mean"] or 0 for s in steps]
        compute = [s["triton"]["compute_infer_ms_mean"] or 0 for s in steps]
        ax_q.bar(labels, queue, label="queue (waiting for a batch/instance)", color="tab:orange")
        ax_q.bar(labels, compute, bottom=queue, label="compute (the batch's execution)", color="tab:blue")
        ax_q.set_xlabel(ax_t.get_xlabel())
        ax_q.set_ylim(0, max(q + c for q, c in zip(queue, compute)) * 1.4 or 1)  # room for the legend
        ax_q.set_ylabel("mean per request (ms)")
        ax_q.set_title("Triton: queue vs compute time")
        ax_q.grid(axis="y", alpha=0.3)
        ax_q.legend()
    for ax in (ax_t, ax_l):
        ax.set_xticks(xs)
    fig.suptitle(_title(report))
    fig.savefig(path, dpi=110)
    return path


def _batch_figure(report: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], path: Path) -> Path:
    sizes = sorted({int(bs) for s in steps for bs in (s.get("triton") or {}).get("batch_histogram", {})})
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(steps))
    for i, step in enumerate(steps):
        hist = step["triton"]["batch_histogram"]
        xs = [bs + (i - (len(steps) - 1) / 2) * width for bs in sizes]
        ax.bar(xs, [hist.get(str(bs), 0) for bs in sizes], width=width, label=step_label(step))
    ax.set_xticks(sizes)
    ax.set_xlabel("Triton batch size (requests in one execution)")
    ax.set_ylabel("executions")
    ax.set_title("batch sizes (Triton statistics, diffed over each step)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.suptitle(_title(report))
    fig.savefig(path, dpi=110)
    return path


def plot_report(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
