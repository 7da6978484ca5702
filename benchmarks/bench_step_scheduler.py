"""The engine alone, no Triton: per-step continuous batching against request-level batching under Poisson load.

    .venv/bin/python benchmarks/bench_step_scheduler.py                    # tiny pipeline, CPU here
    python benchmarks/bench_step_scheduler.py --real-size                  # SD 1.5-sized, 512x512, 25 steps, CUDA

The same engine (`BatchedGenerator`, 16 random rank-4 adapters prepared once) serves the same seeded Poisson
request stream two ways, in this process:
  * request-level: what Triton's dynamic batcher and faceharmony_diffusion do: the first waiting request opens a
    batch, which closes after `--window-ms` (50 ms, config.pbtxt) or at `--request-batch` requests (8, Triton's
    max_batch_size), and one `engine.generate` runs all of its steps; requests arriving meanwhile queue;
  * continuous: `ContinuousBatcher` (core/diffusion/continuous.py), up to `--max-batch` samples (16), requests
    joining at the next step.
First each serves `--count` requests all at once (saturation: images/s); then Poisson arrivals at 50/80/95 % of
the request-level saturation rate, latency from each request's scheduled arrival: p50/p95/p99, throughput.
Then `--users` x `--per-user` images all in flight against one diffusers pipeline with LoRA hot-swapping.
This is the GPU half of issue 16's comparison (benchmarks/gpu_continuous.sh runs it after bench_engine.py's
real-size figures: one command, within 8 minutes on one H100/H200 by design; not yet run on one). On the GPU machine install diffusers' wheel first, as
benchmarks/bench_engine.py says. Figures go to stdout and, with --json, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from bench_engine import random_adapter
from bench_training import build_real_size_pipeline, machine_lines

from faceharmony.core.diffusion.continuous import ContinuousBatcher
from faceharmony.core.diffusion.engine import BatchedGenerator, GenerationRequest
from faceharmony.core.diffusion.pipeline import build_tiny_pipeline, load_base

LOADS = (0.5, 0.8, 0.95)


def schedule(rate: float | None, count: int, seed: int) -> np.ndarray:
    """Arrival offsets (s): Poisson at `rate`, or all at 0 (saturation)."""
    if rate is None:
        return np.zeros(count)
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1.0 / rate, size=count))


def requests(adapters, count: int, args, per_user: int = 0) -> list[GenerationRequest]:
    """Request i uses adapter i % len(adapters), or with per_user, adapter i // per_user (a user's images)."""
    return [
        GenerationRequest(
            "a portrait photo of sks person, studio lighting",
            adapters[i // per_user if per_user else i % len(adapters)],
            seed=i,
            steps=args.steps,
            guidance_scale=7.5,
            width=args.size,
            height=args.size,
            request_id=str(i),
        )
        for i in range(count)
    ]


def run_request_level(engine, reqs, arrivals, args) -> list[float]:
    """Latency per request (s) with a dynamic batcher in front of `engine.generate`."""
    t0 = time.perf_counter()
    done = [0.0] * len(reqs)
    nxt = 0
    while nxt < len(reqs):
        now = time.perf_counter() - t0
        if arrivals[nxt] > now:
            time.sleep(arrivals[nxt] - now)
        opened = max(time.perf_counter() - t0, arrivals[nxt])
        close = opened + args.window_ms / 1000
        batch = [nxt]
        nxt += 1
        while nxt < len(reqs) and len(batch) < args.request_batch:
            now = time.perf_counter() - t0
            if arrivals[nxt] <= now:
                batch.append(nxt)
                nxt += 1
            elif arrivals[nxt] <= close:
                time.sleep(min(arrivals[nxt], close) - now)
            else:
                if close > now:
                    time.sleep(close - now)
                break
        results = engine.generate([reqs[i] for i in batch])
        assert all(r.ok for r in results), [r.error for r in results]
        finished = time.perf_counter() - t0
        for i in batch:
            done[i] = finished - arrivals[i]
    return done


def run_continuous(engine, reqs, arrivals, args) -> list[float]:
    """Latency per request (s) with the step scheduler. Its loop runs on this thread, the one every other phase
    ran its torch work on, and a second thread submits the requests at their arrival times: with two threads
    doing torch work in one process, the second runs at about half speed on this CPU (GNU OpenMP keeps a
    thread pool per thread; RESULTS.md)."""
    batcher = ContinuousBatcher(engine, max_batch=args.max_batch)
    t0 = time.perf_counter()
    done = [0.0] * len(reqs)
    left = [len(reqs)]
    errors = []

    def finished(i):
        def cb(result):
            if not result.ok:
                errors.append(result.error)
            done[i] = time.perf_counter() - t0 - arrivals[i]
            left[0] -= 1

        return cb

    def feed():
        for i, req in enumerate(reqs):
            now = time.perf_counter() - t0
            if arrivals[i] > now:
                time.sleep(arrivals[i] - now)
            batcher.submit(req, finished(i))

    feeder = threading.Thread(target=feed, name="arrivals", daemon=True)
    feeder.start()
    deadline = time.monotonic() + 3600
    while left[0]:
        assert time.monotonic() < deadline, "continuous batcher did not finish"
        if not batcher.step():
            time.sleep(0.001)  # nothing to step: the next arrival is at most a millisecond late
    feeder.join()
    batcher.stop()
    assert not errors, errors[:3]
    return done


def figures(latencies: list[float], arrivals: np.ndarray) -> dict:
    wall = max(a + lat for a, lat in zip(arrivals, latencies))
    p = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    return {"p50_ms": p[0], "p95_ms": p[1], "p99_ms": p[2], "images_per_s": len(latencies) / wall}


def users_phase(engine, base, folder: Path, tmp: Path, args) -> dict:
    """`--users` users x `--per-user` images all in flight: the step scheduler against one diffusers pipeline
    with LoRA hot-swapping that batches each user's images (bench_continuous.hotswap_baseline), images/s."""
    from bench_continuous import hotswap_baseline
    from bench_engine import reference_pipeline

    from faceharmony.core.diffusion.pipeline import fingerprint_folder
    from faceharmony.loadtest.seed import layer_shapes, synthetic_adapter
    from faceharmony.trainer.lora import load_adapter_bytes

    shapes, fingerprint = layer_shapes(folder), fingerprint_folder(folder)
    adapters = [
        engine.prepare_adapter(
            load_adapter_bytes(synthetic_adapter(shapes, 4, fingerprint, np.random.default_rng([1, i])))
        )
        for i in range(args.users)
    ]
    reqs = requests(adapters, args.users * args.per_user, args, per_user=args.per_user)
    arrivals = schedule(None, len(reqs), 0)
    continuous = figures(run_continuous(engine, reqs, arrivals, args), arrivals)["images_per_s"]
    variant = "fp16" if args.real_size else None
    pipe = reference_pipeline(folder, base.device, base.dtype, variant)
    hotswap = hotswap_baseline(pipe, folder, tmp, args.users, args.per_user, args)
    del pipe
    print(
        f"{args.users} users x {args.per_user} images in flight: diffusers hot-swap pipeline {hotswap:.2f} images/s, "
        f"step scheduler {continuous:.2f} images/s: {continuous / hotswap:.2f}x"
    )
    return {"hotswap_images_per_s": hotswap, "continuous_images_per_s": continuous}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-size", action="store_true", help="SD 1.5-sized random-weight base (CUDA)")
    parser.add_argument("--size", type=int, default=None, help="default 128 tiny, 512 real-size")
    parser.add_argument("--steps", type=int, default=None, help="default 10 tiny, 25 real-size")
    parser.add_argument("--count", type=int, default=48, help="requests per step")
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16, help="continuous: samples per running batch")
    parser.add_argument("--request-batch", type=int, default=8, help="request-level: Triton's max_batch_size")
    parser.add_argument("--window-ms", type=float, default=50.0, help="request-level: the batching window")
    parser.add_argument("--users", type=int, default=32, help="users in flight against the hot-swap pipeline (0: skip)")
    parser.add_argument("--per-user", type=int, default=2, help="images per user")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.size = args.size or (512 if args.real_size else 128)
    args.steps = args.steps or (25 if args.real_size else 10)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print("\n".join(machine_lines(device)))
    if args.real_size and device.type != "cuda":
        print("--real-size needs CUDA: nothing measured")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        folder = Path(tmp) / "base"
        if args.real_size:
            build_real_size_pipeline(folder, device)
        else:
            build_tiny_pipeline(folder, seed=0)
        base = load_base(folder, device=device.type)
        engine = BatchedGenerator(base, max_batch=max(args.max_batch, args.request_batch))
        adapters = [engine.prepare_adapter(random_adapter(base.unet, 4, seed=i)) for i in range(args.adapters)]
        reqs = requests(adapters, args.count, args)
        engine.generate(reqs[:2])  # warm-up (kernels, allocator)
        out: dict = {"settings": vars(args) | {"json": str(args.json)}, "steps": []}
        sat = {}
        for name, run in (("request_level", run_request_level), ("continuous", run_continuous)):
            arrivals = schedule(None, args.count, 0)
            sat[name] = figures(run(engine, reqs, arrivals, args), arrivals)["images_per_s"]
            print(f"saturation {name}: {sat[name]:.2f} images/s")
        out["saturation"] = sat
        print(f"\n{args.adapters} adapters, {args.size}x{args.size}, {args.steps} steps, {args.count} requests a step")
        print(
            f"{'load':>5} {'rate/s':>7} | {'request-level p50/p95/p99 ms':>30} {'img/s':>6} | {'continuous':>22} {'img/s':>6} | p95"
        )
        for load in LOADS:
            rate = sat["request_level"] * load
            arrivals = schedule(rate, args.count, seed=int(load * 100))
            a = figures(run_request_level(engine, reqs, arrivals, args), arrivals)
            b = figures(run_continuous(engine, reqs, arrivals, args), arrivals)
            out["steps"].append({"load": load, "rate": rate, "request_level": a, "continuous": b})
            fa = f"{a['p50_ms']:.0f}/{a['p95_ms']:.0f}/{a['p99_ms']:.0f}"
            fb = f"{b['p50_ms']:.0f}/{b['p95_ms']:.0f}/{b['p99_ms']:.0f}"
            print(
                f"{load * 100:4.0f}% {rate:7.2f} | {fa:>30} {a['images_per_s']:6.2f} | {fb:>22} "
                f"{b['images_per_s']:6.2f} | {b['p95_ms'] / a['p95_ms']:.2f}x"
            )
        print(f"saturation throughput continuous/request-level: {sat['continuous'] / sat['request_level']:.2f}x")
        if args.users:
            out["users"] = users_phase(engine, base, folder, Path(tmp), args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
