"""The ops load tester (`faceharmony-loadtest`, loadtest/).

Fast (no server): the Poisson arrival schedule (seeded, its mean rate); the open loop queueing arrivals for a
slot (none dropped) and timing each from its scheduled arrival (lower bounds that must hold with a real
0.2 s request behind one slot: never timings that can flake), the realized rate and the throughput over the
arrival window; a second interrupt that stops waiting for requests in flight; the closed loop's bounds with a
stand-in request; the percentile and Triton-statistics arithmetic of the report, the table's n and its "-"
for p95/p99 at small n, plots that draw missing values as gaps (0700 folder, 0600 PNGs); Triton's statistics
waited for until its execution count settles, and recorded as an error when Triton is gone; a sweep that
ends with a partial report when its target goes away; the synthetic adapter's format, the shipped
perf_analyzer example; the refusal of a non-loopback target, of options the target does not use and of a
missing tritonclient (one line), by the command line before anything is seeded.

With the real Triton server (marked `triton`, about a minute): `seed`, then `run` at two concurrencies and one
open-loop rate against the tiny model with that manifest, then `cleanup`; a `run` that seeds and cleans up
itself; and a SIGINT to the command mid-step: exit 130, the report written, the seeded blobs gone. The
reports' outcomes are checked, not their timings: every image counted was opened with its request's key,
Triton's batch-size histogram is non-empty and sums to its own execution count over the step (and its batch
sizes to the requests it served), the PNGs decode, and afterwards no adapter blob is left and every data key
is shredded.

With a real `faceharmony-up` (marked `processes` and `triton`, under a minute): the orders target with one
test user and two orders (the report, Triton's statistics of the same system, every generated photo deleted,
the account deactivated, the users file gone), then `cleanup --users` deleting an account a killed run left.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceharmony.loadtest import arrivals, report
from faceharmony.loadtest.address import RemoteHostRefused, check_target, split_host_port
from faceharmony.loadtest.main import main
from faceharmony.loadtest.perf_analyzer_input import EXAMPLE, example_manifest, input_data
from faceharmony.loadtest.report import Outcome

# ------------------------------------------------------------------------------------------ fast


def test_poisson_schedule_is_seeded_and_has_the_mean_rate():
    a = arrivals.poisson_schedule(50.0, count=20_000, duration_s=3600, rng=np.random.default_rng(7))
    b = arrivals.poisson_schedule(50.0, count=20_000, duration_s=3600, rng=np.random.default_rng(7))
    assert np.array_equal(a, b) and len(a) == 20_000
    assert np.all(np.diff(a) > 0)
    assert len(a) / a[-1] == pytest.approx(50.0, rel=0.03)
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential gaps: cv 1
    cut = arrivals.poisson_schedule(50.0, count=20_000, duration_s=10, rng=np.random.default_rng(7))
    assert cut[-1] < 10 and len(cut) == np.count_nonzero(a < 10)
    with pytest.raises(ValueError):
        arrivals.poisson_schedule(0, count=10, duration_s=1, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        arrivals.poisson_schedule(1, count=arrivals.MAX_COUNT + 1, duration_s=1, rng=np.random.default_rng(0))


def test_open_loop_queues_arrivals_for_a_slot_and_times_them_from_their_scheduled_arrival():
    """One slot, each request taking at least 0.2 s, arrivals at 50/s: every arrival is sent (none dropped),
    in order, and each one's latency includes its wait from the scheduled arrival. Lower bounds only: the
    request before it held the slot for 0.2 s from no earlier than its own scheduled time."""
    service_s = 0.2
    schedule = arrivals.poisson_schedule(50.0, count=4, duration_s=100, rng=np.random.default_rng(3))
    sent = []

    def send(i):
        sent.append(i)
        time.sleep(service_s)
        return Outcome(ok=True, latency_s=service_s, images=1, opened=1)

    run = arrivals.run_open_loop(send, 50.0, count=4, duration_s=100, max_inflight=1, rng=np.random.default_rng(3))
    assert sent == [0, 1, 2, 3] and len(run.outcomes) == 4 == run.arrivals
    assert run.queued >= 1 and run.late >= 1
    by_start = sorted(run.outcomes, key=lambda o: o.finished_s)
    for k, outcome in enumerate(by_start):
        # started no earlier than the k requests before it, each 0.2 s from the first scheduled arrival
        assert outcome.start_delay_s >= schedule[0] + k * service_s - schedule[k] - 1e-6
        assert outcome.latency_s >= outcome.start_delay_s + service_s
    assert run.arrival_window_s == pytest.approx(schedule[-1])
    s = report.summarize_step(
        {"mode": "open", "rate": 50.0},
        run.outcomes,
        run.wall_s,
        arrivals=run.arrivals,
        arrival_window_s=run.arrival_window_s,
        late=run.late,
    )
    assert s["overloaded"] and s["realized_rate"] == pytest.approx(4 / schedule[-1])
    # over the arrival window: only what was answered by the last arrival counts (the drain does not)
    assert s["answered_in_window"] < 4 and s["images_per_s"] < s["realized_rate"]


def test_open_loop_on_a_fake_clock_sends_every_arrival_at_its_time():
    now = [0.0]
    lock = threading.Lock()

    def sleep(seconds):  # the schedule runs on a clock of its own: no real waiting
        with lock:
            now[0] += seconds

    expected = arrivals.poisson_schedule(5.0, count=30, duration_s=100, rng=np.random.default_rng(3))
    run = arrivals.run_open_loop(
        lambda i: Outcome(ok=True, latency_s=0.0, images=1, opened=1),
        5.0,
        count=30,
        duration_s=100,
        max_inflight=4,
        rng=np.random.default_rng(3),
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert run.arrivals == len(run.outcomes) == len(expected)  # none dropped (the fake clock runs ahead of them)
    assert run.arrival_window_s == pytest.approx(expected[-1])


def test_a_second_interrupt_stops_waiting_for_requests_in_flight():
    """stop: no new request, those in flight waited for; abandon: not waited for (the step returns)."""
    control = arrivals.Control()
    release = threading.Event()
    both = threading.Barrier(2)

    def send(i):
        both.wait(10)  # both workers have a request out before the stop
        control.stop.set()
        release.wait(30)
        return Outcome(ok=True, latency_s=0.0)

    threading.Timer(0.3, control.abandon.set).start()
    t0 = time.monotonic()
    run = arrivals.run_closed_loop(send, 2, count=10, duration_s=60, control=control)
    assert time.monotonic() - t0 < 25  # returned on the abandon, not after the request
    assert run.stopped and run.abandoned == 2 and run.outcomes == [] and control.in_flight == 2
    release.set()


def test_closed_loop_sends_each_index_once_within_its_bounds_and_counts_what_raises():
    seen = []
    lock = threading.Lock()

    def send(i):
        with lock:
            seen.append(i)
        if i == 3:
            raise KeyError("a target bug")
        return Outcome(ok=True, latency_s=0.01, images=1, opened=1)

    run = arrivals.run_closed_loop(send, 3, count=10, duration_s=60)
    assert sorted(seen) == list(range(10)) and len(run.outcomes) == 10
    assert [o.reason for o in run.outcomes if not o.ok] == ["CLIENT_KeyError"]
    with pytest.raises(ValueError):
        arrivals.run_closed_loop(send, 0, count=10, duration_s=60)
    with pytest.raises(ValueError):
        arrivals.run_closed_loop(send, 1, count=10, duration_s=arrivals.MAX_DURATION_S + 1)
    stop = threading.Event()
    stop.set()
    assert arrivals.run_closed_loop(send, 2, count=10, duration_s=60, stop=stop).outcomes == []


def test_percentiles_and_step_summary():
    p = report.percentiles(range(1, 101))
    assert (p["p50"], p["p95"], p["p99"], p["max"]) == (50.5, pytest.approx(95.05), pytest.approx(99.01), 100)
    assert report.percentiles([]) == {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    outcomes = [Outcome(ok=True, latency_s=s, images=1, opened=1) for s in (0.1, 0.2, 0.3, 0.4)]
    outcomes += [Outcome(ok=False, latency_s=1, reason="NOT_FOUND"), Outcome(ok=False, latency_s=2, reason="NOT_FOUND")]
    outcomes += [Outcome(ok=False, latency_s=1, reason="DEADLINE_EXCEEDED")]
    s = report.summarize_step({"mode": "closed", "concurrency": 2}, outcomes, 2.0)
    assert (s["requests"], s["succeeded"], s["failed"], s["images"], s["images_opened"]) == (7, 4, 3, 4, 4)
    assert s["images_per_s"] == 2.0
    assert s["errors"] == {"DEADLINE_EXCEEDED": 1, "NOT_FOUND": 2}
    assert s["latency_ms"]["p50"] == pytest.approx(250.0)  # of the successful requests only
    assert s["latency_ms"]["n"] == 4 and s["latency_ms"]["p99"] is not None  # the JSON keeps them, with n


def test_the_table_shows_p95_from_20_and_p99_from_100_successes_and_failures_beside_them():
    from rich.console import Console

    def step(n_ok, failed=0, **extra):
        outcomes = [Outcome(ok=True, latency_s=0.5 + i / 1000, images=1) for i in range(n_ok)]
        outcomes += [Outcome(ok=False, latency_s=1, reason="DEADLINE_EXCEEDED")] * failed
        return report.summarize_step({"mode": "closed", "concurrency": 1}, outcomes, 10.0) | extra

    steps = [step(19, failed=2), step(20), step(100)]
    shown = [report.shown_latency(s["latency_ms"]) for s in steps]
    assert [(v["p95"] is None, v["p99"] is None) for v in shown] == [(True, True), (False, True), (False, False)]
    console = Console(width=250, record=True)
    console.print(report.render_table({"target": "triton", "settings": {"summary": "x"}, "steps": steps}))
    rows = [line for line in console.export_text().splitlines() if "closed c=1" in line]
    cells = [[c.strip() for c in row.split("│")[1:-1]] for row in rows]
    assert [c[3:8] for c in cells] == [
        ["19", "2", "509", "-", "-"],
        ["20", "0", "510", "518", "-"],
        ["100", "0", "550", "594", "598"],
    ]
    assert cells[0][11] == "DEADLINE_EXCEEDED 2"


def test_plots_draw_missing_values_as_gaps_not_zero(tmp_path):
    from faceharmony.loadtest.plots import plot_report

    ok = [Outcome(ok=True, latency_s=0.3, images=1, finished_s=0.5)] * 30
    steps = [
        report.summarize_step(
            {"mode": "open", "rate": 2.0}, ok, 5.0, arrivals=30, arrival_window_s=4.0, late=10, triton={"error": "X"}
        ),
        report.summarize_step(
            {"mode": "open", "rate": 4.0},
            [Outcome(ok=False, latency_s=1, reason="UNAVAILABLE")],
            1.0,
            arrivals=1,
            arrival_window_s=0.5,
        ),
    ]
    assert steps[0]["overloaded"] and steps[1]["latency_ms"]["p50"] is None
    rep = {"target": "triton", "settings": {"summary": "x"}, "steps": steps}
    (path,) = plot_report(rep, tmp_path / "plots")
    assert path.stat().st_mode & 0o777 == 0o600 and (tmp_path / "plots").stat().st_mode & 0o777 == 0o700
    with Image.open(path) as png:
        assert png.format == "PNG"


def _stats(success, queue_ns, infer_ns, executions, batches):
    """A model's entry of Triton's statistics as its JSON writes it (counters as strings)."""
    return {
        "execution_count": str(executions),
        "inference_count": str(sum(bs * n for bs, n in batches.items())),
        "inference_stats": {
            "success": {"count": str(success), "ns": "1"},
            "fail": {"count": "1", "ns": "5"},
            "queue": {"count": str(success), "ns": str(queue_ns)},
            "compute_infer": {"count": str(success), "ns": str(infer_ns)},
        },
        "batch_stats": [
            {"batch_size": str(bs), "compute_infer": {"count": str(n), "ns": "9"}} for bs, n in batches.items()
        ],
    }


def test_triton_statistics_diff():
    before = _stats(10, 100_000_000, 500_000_000, 7, {1: 4, 2: 3})
    after = _stats(20, 300_000_000, 1_500_000_000, 10, {1: 4, 2: 4, 8: 1})
    d = report.triton_diff(before, after)
    assert d["requests_success"] == 10 and d["requests_failed"] == 0
    assert d["queue_ms_mean"] == pytest.approx(20.0) and d["compute_infer_ms_mean"] == pytest.approx(100.0)
    assert d["batch_histogram"] == {"2": 1, "8": 1} and d["executions"] == 3
    assert d["inferences"] == 10 and d["mean_batch_size"] == 5.0
    assert d["compute_output_ms_mean"] is None  # absent in both: no requests counted
    assert report.triton_diff(before, {"error": "UNAVAILABLE"}) == {"error": "UNAVAILABLE"}


class _FakeStatisticsClient:
    """Triton's statistics as a sequence of answers (the last repeated); an exception is raised."""

    def __init__(self, answers):
        self.answers = list(answers)

    def get_inference_statistics(self, model_name, as_json, client_timeout):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return {"model_stats": [answer]}


def test_statistics_wait_for_the_execution_count_to_settle_and_record_triton_gone():
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    from faceharmony.loadtest.triton_target import SETTLE_POLLS, TritonStatistics

    stats = TritonStatistics.__new__(TritonStatistics)
    stats.model_name = "m"
    before = _stats(10, 0, 0, 7, {1: 7})
    # successes counted at once, executions still moving for two reads: not settled until they hold still
    moving = [_stats(12, 0, 0, 8, {1: 8}), _stats(12, 0, 0, 9, {1: 9}), _stats(12, 0, 0, 9, {1: 9})]
    stats._client = _FakeStatisticsClient(moving)
    after, settled = stats.wait_statistics(before, 2)
    assert settled and after["execution_count"] == "9"
    stats._client = _FakeStatisticsClient([_stats(11, 0, 0, 8, {1: 8})])  # one success short: never complete
    after, settled = stats.wait_statistics(before, 2, timeout_s=0.3 + SETTLE_POLLS * 0.1)
    assert not settled and "error" not in after
    gone = InferenceServerException("connection refused", status="StatusCode.UNAVAILABLE")
    stats._client = _FakeStatisticsClient([gone])
    assert stats.statistics() == {"error": "UNAVAILABLE"}
    assert stats.wait_statistics(before, 2) == ({"error": "UNAVAILABLE"}, False)


def test_a_target_gone_mid_run_ends_the_sweep_with_a_partial_report():
    from faceharmony.loadtest.sweep import Plan, run_sweep

    class Stats:
        reads = 0

        def statistics(self):
            self.reads += 1
            return _stats(0, 0, 0, 0, {}) if self.reads < 3 else {"error": "UNAVAILABLE"}

        def wait_statistics(self, before, succeeded):
            return self.statistics(), True

    class Target:
        def send(self, index):
            return Outcome(ok=True, latency_s=0.01, images=1, opened=1)

    class Broken(Target):
        def warm_up(self, first, control, duration_s):
            raise ConnectionError("the API went away")

    plan = Plan(concurrencies=[1, 2], count=2, warmup=0)
    rep = run_sweep(Target(), plan, meta={"target": "t"}, stats=Stats())
    assert rep["error"] is None and [s["triton"] for s in rep["steps"]][1] == {"error": "UNAVAILABLE"}
    rep = run_sweep(Broken(), plan, meta={"target": "t"})
    assert rep["error"] == "ConnectionError: the API went away" and rep["steps"] == []


def test_loopback_only_unless_the_one_host_is_named():
    for ok in ("127.0.0.1:8001", "127.8.9.1:1", "localhost:50051", "[::1]:8001"):
        assert check_target(ok) == ok
    for remote in ("10.0.0.5:8001", "triton.internal:8001", "[2001:db8::1]:8001", "0.0.0.0:8001"):
        with pytest.raises(RemoteHostRefused):
            check_target(remote)
    assert check_target("triton.internal:8001", "triton.internal") == "triton.internal:8001"
    assert check_target("[2001:db8::1]:8001", "2001:db8::1")
    with pytest.raises(RemoteHostRefused):
        check_target("10.0.0.6:8001", "10.0.0.5")
    for bad in ("8001", "host:", "::1:8001", "host:99999"):
        with pytest.raises(ValueError):
            split_host_port(bad)


def test_the_command_refuses_a_remote_target_before_seeding_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACEHARMONY_DATA_DIR", str(tmp_path))
    out = tmp_path / "out"
    code = main(["run", "--target", "triton", "--url", "10.1.2.3:8001", "--concurrency", "1", "--out", str(out)])
    assert code == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "keys").exists() and not (tmp_path / "blobs").exists()
    assert main(["run", "--target", "orders", "--url", "example.org:443", "--rate", "1"]) == 2
    assert main(["run", "--target", "triton", "--concurrency", "0"]) == 2  # a usage error, no traceback
    assert main(["run", "--target", "triton", "--concurrency", "1,300"]) == 2  # over the bound
    assert main(["run", "--target", "triton", "--rate", "1", "--count", "100001"]) == 2


@pytest.mark.parametrize(
    "option",
    [["--models", "4"], ["--manifest", "m.json"], ["--keep"], ["--width", "64"], ["--steps", "2"]],
)
def test_options_the_orders_target_does_not_use_are_usage_errors(option, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACEHARMONY_DATA_DIR", str(tmp_path))
    assert main(["run", "--target", "orders", "--concurrency", "1", *option]) == 2
    assert f"{option[0]}: not used by --target orders" in capsys.readouterr().err
    assert main(["run", "--target", "triton", "--concurrency", "1", "--users", "2"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_without_tritonclient_the_run_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setenv("FACEHARMONY_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # import fails as when it is not installed
    for target in ("triton", "orders"):
        assert main(["run", "--target", target, "--concurrency", "1"]) == 2
        err = capsys.readouterr().err
        assert "pip install 'faceharmony[triton]'" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_synthetic_adapter_is_in_the_trainers_format():
    from faceharmony.core.diffusion.adapter_format import adapter_metadata, adapter_ranks, parse_adapter_bytes
    from faceharmony.loadtest.seed import synthetic_adapter

    shapes = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (64, 32),
        "mid_block.attn2.to_out.0": (8, 16),
    }
    data = synthetic_adapter(shapes, 4, "fp-123", np.random.default_rng([0, 1]))
    tensors = parse_adapter_bytes(data)
    assert adapter_ranks(tensors) == {4}
    down = tensors["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight"]
    up = tensors["unet.mid_block.attn2.to_out.0.lora.up.weight"]
    assert tuple(down.shape) == (4, 64) and tuple(up.shape) == (16, 4)
    assert down.abs().min() > 0 and up.abs().sum() > 0
    meta = adapter_metadata(data)
    assert meta["base_fingerprint"] == "fp-123" and meta["synthetic"] == "faceharmony-loadtest"
    assert synthetic_adapter(shapes, 4, "fp-123", np.random.default_rng([0, 1])) == data  # seeded
    assert synthetic_adapter(shapes, 4, "fp-123", np.random.default_rng([0, 2])) != data


def test_shipped_perf_analyzer_example_is_what_the_command_writes():
    assert json.loads(EXAMPLE.read_text()) == input_data(example_manifest(), width=64, height=64, steps=4)


# ------------------------------------------------------------------------------------------ Triton


@pytest.fixture(scope="module")
def triton_system(tmp_path_factory):
    """A data folder with the tiny base and a real Triton server on it (as `make up` runs it)."""
    from tests.support.triton import require_triton, triton_env

    require_triton()
    from faceharmony.core.diffusion.pipeline import build_tiny_pipeline
    from faceharmony.triton_launcher.server import start_triton

    data_dir = tmp_path_factory.mktemp("loadtest-data")
    build_tiny_pipeline(data_dir / "base-model", seed=0)
    with start_triton(tmp_path_factory.mktemp("triton"), env=triton_env(data_dir), ready_timeout=120) as srv:
        yield data_dir, srv
        if srv.process.poll() is not None:
            print(srv.log_tail())


def _check_report(path: Path, expected_steps: list[str]) -> dict:
    rep = json.loads(path.read_text())
    assert [report.step_label(s) for s in rep["steps"]] == expected_steps
    for step in rep["steps"]:
        assert step["errors"] == {} and step["succeeded"] == step["requests"] > 0, step
        assert step["images"] == step["succeeded"] == step["images_opened"]  # each opened with its key
        triton = step["triton"]
        hist = {int(k): v for k, v in triton["batch_histogram"].items()}
        assert hist and sum(hist.values()) == triton["executions"]  # Triton's own count of executions
        assert sum(bs * n for bs, n in hist.items()) == triton["inferences"] == step["succeeded"]
        assert triton["requests_success"] == step["succeeded"] and triton["compute_infer_ms_mean"] > 0
    for name in rep["plots"]:
        with Image.open(name) as png:
            png.verify()
        with Image.open(name) as png:
            assert png.format == "PNG" and png.size[0] > 400
    assert {Path(p).name for p in rep["plots"]} >= {"batch_sizes.png"}
    return rep


def _models_left(data_dir: Path) -> list:
    from faceharmony.core.blobstore.base import Role
    from faceharmony.core.blobstore.local import LocalBlobStore

    return list(LocalBlobStore(data_dir / "blobs", Role.RETENTION).list("models"))


@pytest.mark.triton
def test_seed_run_cleanup_against_triton(triton_system, tmp_path, monkeypatch):
    from tests.support.keyrings import make_keyring

    data_dir, srv = triton_system
    monkeypatch.setenv("FACEHARMONY_DATA_DIR", str(data_dir))
    monkeypatch.setenv("FACEHARMONY_TRITON_URL", srv.grpc_url)
    manifest_path = tmp_path / "manifest.json"
    assert main(["seed", "--models", "3", "--manifest", str(manifest_path)]) == 0
    assert manifest_path.stat().st_mode & 0o777 == 0o600
    manifest = json.loads(manifest_path.read_text())
    keys = [m["key_id"] for m in manifest["models"]]
    assert len({m["blob_id"] for m in manifest["models"]}) == 3 and len(_models_left(data_dir)) == 3

    pa = tmp_path / "pa.json"
    assert main(["perf-analyzer-input", "--manifest", str(manifest_path), "--out", str(pa)]) == 0
    entries = json.loads(pa.read_text())["data"]
    assert [(e["ADAPTER_BLOB_ID"], e["ADAPTER_KEY_ID"]) for e in entries] == [
        ([m["blob_id"]], [m["key_id"]]) for m in manifest["models"]
    ]

    out = tmp_path / "out"
    args = ["run", "--target", "triton", "--manifest", str(manifest_path), "--concurrency", "1,3", "--rate", "4"]
    args += ["--count", "6", "--warmup", "0", "--width", "64", "--height", "64", "--steps", "2", "--out", str(out)]
    t0 = time.monotonic()
    assert main(args) == 0
    print(f"\nrun took {time.monotonic() - t0:.1f}s")
    rep = _check_report(out / "report.json", ["closed c=1", "closed c=3", "open 4/s"])
    assert rep["warmup"]["requests"] == 3 == rep["warmup"]["succeeded"]  # every model once
    assert rep["manifest"]["seeded_by_run"] is False and rep["cleanup"] is None
    assert len(_models_left(data_dir)) == 3  # a given manifest is the operator's to clean up

    assert main(["cleanup", "--manifest", str(manifest_path)]) == 0
    assert _models_left(data_dir) == [] and not manifest_path.exists()
    keyring = make_keyring(data_dir / "keys")
    assert not any(keyring.exists(k) for k in keys)


@pytest.mark.triton
def test_run_seeds_and_cleans_up_itself(triton_system, tmp_path, monkeypatch):
    from faceharmony.core.settings import Settings
    from faceharmony.loadtest.runs import run_triton
    from faceharmony.loadtest.sweep import Plan

    data_dir, srv = triton_system
    settings = Settings.from_env({"FACEHARMONY_DATA_DIR": str(data_dir), "FACEHARMONY_TRITON_URL": srv.grpc_url})
    before = {b.blob_id for b in _models_left(data_dir)}
    plan = Plan(concurrencies=[2], rates=[], count=4, warmup=0)
    rep = run_triton(
        settings, plan, tmp_path, control=arrivals.Control(), url=srv.grpc_url, models=2, width=96, height=64, steps=2
    )
    assert rep["cleanup"] == {"blobs_deleted": 2, "keys_shredded": 2}
    assert {b.blob_id for b in _models_left(data_dir)} == before
    assert not (tmp_path / "manifest.json").exists()
    _check_report(tmp_path / "report.json", ["closed c=2"])


@pytest.mark.triton
def test_ctrl_c_mid_step_writes_the_report_exits_130_and_cleans_up_what_it_seeded(
    triton_system, tmp_path, monkeypatch, capsys
):
    """A SIGINT to this process (the command's own handler) while the second measured request is out."""
    import os
    import signal

    from faceharmony.loadtest import triton_target

    data_dir, srv = triton_system
    monkeypatch.setenv("FACEHARMONY_DATA_DIR", str(data_dir))
    monkeypatch.setenv("FACEHARMONY_TRITON_URL", srv.grpc_url)
    before = {b.blob_id for b in _models_left(data_dir)}
    real = triton_target.TritonTarget.send_row
    calls = []

    def send_row(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2 + 2:  # 2 models warmed up, then the step's second request
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(triton_target.TritonTarget, "send_row", send_row)
    out = tmp_path / "out"
    args = ["run", "--target", "triton", "--models", "2", "--concurrency", "1", "--count", "50", "--warmup", "0"]
    args += ["--width", "64", "--height", "64", "--steps", "2", "--out", str(out)]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "stopping: waiting for 1 requests in flight" in err
    rep = json.loads((out / "report.json").read_text())
    assert rep["stopped"] is True and rep["steps"][0]["stopped"] is True
    assert 1 <= rep["steps"][0]["requests"] < 50 and rep["steps"][0]["succeeded"] >= 1
    assert rep["cleanup"] == {"blobs_deleted": 2, "keys_shredded": 2}
    assert {b.blob_id for b in _models_left(data_dir)} == before  # the seeded blobs are gone
    assert out.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in out.iterdir())


@pytest.mark.processes
@pytest.mark.triton
def test_the_orders_target_against_make_up_measures_and_leaves_no_account_or_photo(tmp_path, monkeypatch):
    """A real `faceharmony-up` (few training and generation steps, as the demo's test), one test user, two
    orders: the report, Triton's statistics of the same system, and the account deleted at the end."""
    import sqlite3

    from tests.support.triton import require_triton

    require_triton()
    from tests.support.system_up import system_up

    with system_up(tmp_path) as system:
        for name, value in system.env.items():
            if name.startswith("FACEHARMONY_"):
                monkeypatch.setenv(name, value)
        data, api_url = system.data_dir, system.api_url
        out = tmp_path / "out"
        args = ["run", "--target", "orders", "--url", api_url, "--users", "1", "--count", "2"]
        args += ["--concurrency", "1", "--warmup", "0", "--timeout", "150", "--out", str(out)]
        assert main(args) == 0
        rep = json.loads((out / "report.json").read_text())
        (step,) = rep["steps"]
        assert (step["requests"], step["succeeded"], step["failed"]) == (2, 2, 0)
        assert step["images_opened"] == 2 and step["latency_ms"]["n"] == 2 and step["latency_ms"]["p50"] > 0
        assert step["triton"]["requests_success"] >= 2 and step["triton"]["compute_infer_ms_mean"] > 0
        assert rep["cleanup"]["accounts_deleted"] == 1 and rep["cleanup"]["photos_not_deleted"] == 0
        assert not (out / "users.json").exists()  # removed once every account is deleted
        with sqlite3.connect(data / "faceharmony.sqlite3") as db:
            users = db.execute("select state from account where role = 'user'").fetchall()
            photos = db.execute("select count(*) from generated_photo where deleted_at is null").fetchone()
        assert users == [("deactivated",)] and photos == (0,)  # each photo deleted after its download

        # What a SIGKILLed run leaves: an account its users file names; `cleanup --users` deletes it.
        from faceharmony.clients.embedded import EmbeddedSystem
        from faceharmony.loadtest.orders_target import ADDRESS_DOMAIN, write_users_file

        address = f"loadtest-killed-0@{ADDRESS_DOMAIN}"
        users_file = write_users_file(tmp_path / "left" / "users.json", api_url, [address])
        assert users_file.stat().st_mode & 0o777 == 0o600 and "token" not in users_file.read_text()
        with EmbeddedSystem(target=api_url, outbox=data / "outbox") as embedded:
            embedded.sign_up(address, "Killed Run").close()
        assert main(["cleanup", "--users", str(users_file)]) == 0
        assert not users_file.exists()
        with sqlite3.connect(data / "faceharmony.sqlite3") as db:
            users = db.execute("select state from account where role = 'user'").fetchall()
        assert users == [("deactivated",), ("deactivated",)]
