"""The ops load tester (`faceharmony-loadtest`, loadtest/).

Fast (no server): the Poisson arrival schedule (seeded, its mean rate), the open loop's drop count and the
closed loop's bounds with a stand-in request, the percentile and Triton-statistics arithmetic of the report,
the synthetic adapter's format, the shipped perf_analyzer example, and the refusal of a non-loopback target
(by the address check and by the command line, before anything is seeded).

With the real Triton server (marked `triton`, about a minute): `seed`, then `run` at two concurrencies and one
open-loop rate against the tiny model with that manifest, then `cleanup`; and a `run` that seeds and cleans up
itself. The reports' outcomes are checked, not their timings: every image counted was opened with its
request's key, Triton's batch-size histogram is non-empty and sums to its own execution count over the step
(and its batch sizes to the requests it served), the PNGs decode, and afterwards no adapter blob is left and
every data key is shredded.
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


def test_open_loop_drops_arrivals_that_find_every_slot_busy():
    """One slot, held by the first request until the schedule is through: every later arrival is dropped."""
    now = [0.0]
    gate = threading.Event()
    sent = []

    def send(i):
        sent.append(i)
        if i == 0:
            gate.wait(10)
        return Outcome(ok=True, latency_s=0.0, images=1, opened=1)

    def sleep(seconds):  # the schedule runs on a clock of its own: no real waiting
        now[0] += seconds

    expected = len(arrivals.poisson_schedule(5.0, count=30, duration_s=100, rng=np.random.default_rng(3)))
    timer = threading.Timer(0.5, gate.set)
    timer.start()
    run = arrivals.run_open_loop(
        send,
        5.0,
        count=30,
        duration_s=100,
        max_inflight=1,
        rng=np.random.default_rng(3),
        clock=lambda: now[0],
        sleep=sleep,
    )
    timer.cancel()
    assert sent == [0] and len(run.outcomes) == 1
    assert run.dropped == expected - 1 and run.late == 0


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
        settings, plan, tmp_path, stop=threading.Event(), url=srv.grpc_url, models=2, width=96, height=64, steps=2
    )
    assert rep["cleanup"] == {"blobs_deleted": 2, "keys_shredded": 2}
    assert {b.blob_id for b in _models_left(data_dir)} == before
    assert not (tmp_path / "manifest.json").exists()
    _check_report(tmp_path / "report.json", ["closed c=2"])
