"""Per-step continuous batching against today's request-level batching, on one Triton, in one run.

    .venv/bin/python benchmarks/bench_continuous.py                 # 16 adapters, 128x128, 10 steps, CPU here
    .venv/bin/python benchmarks/bench_continuous.py --count 30      # quicker

One Triton server (the nvidia-pytriton wheel's) serves both models of triton_models/ side by side, on the same
tiny base pipeline, the same adapter cache bound and the same engine batch bound:
  * faceharmony_diffusion (today's): Triton's dynamic batcher (50 ms window) hands whole requests to one
    `engine.generate`, which runs every step of them; a request that arrives mid-loop waits for the loop to end;
  * faceharmony_diffusion_continuous: decoupled; requests join the running loop at the next step
    (core/diffusion/continuous.py).
`--models` synthetic adapters (the load tester's seeded models, each under its own data key) are spread over the
requests; every answer is opened with its key and checked as the order worker checks it (loadtest/triton_target).

1. Saturation: a closed loop at `--concurrency` requests in flight, for each model: images/s.
2. Open loop: Poisson arrivals (seeded, the same schedule for both models) at 50 %, 80 % and 95 % of today's
   measured saturation rate; latency from each request's scheduled arrival (no coordinated omission):
   p50/p95/p99 and throughput, for each model.
Reported: the table, the ratios continuous/request-level (goal: p95 at 80 % <= 0.5x, saturation throughput
>= 1.0x), each model's load-tester report and plots (loadtest/plots.py) and a comparison figure, under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import machine_lines

REQUEST_LEVEL = "faceharmony_diffusion"
CONTINUOUS = "faceharmony_diffusion_continuous"
LOADS = (0.5, 0.8, 0.95)


def run_model(url, model, manifest, keyring, args, plan, label, target_class=None):
    from faceharmony.loadtest.sweep import run_sweep
    from faceharmony.loadtest.triton_target import TritonStatistics, TritonTarget

    target = (target_class or TritonTarget)(
        url, model, manifest, keyring, width=args.size, height=args.size, steps=args.steps, timeout_s=600, seed=1
    )
    stats = TritonStatistics(url, model)
    try:
        meta = {"target": "triton", "url": url, "model": model, "settings": {"summary": label}}
        return run_sweep(target, plan, meta=meta, stats=stats)
    finally:
        stats.close()
        target.close()


def hotswap_baseline(pipe, base_dir: Path, tmp: Path, users: int, per_user: int, args) -> float:
    """The strongest single-pipeline alternative: one diffusers pipeline (`pipe`, loaded from `base_dir`) with
    LoRA hot-swapping (`enable_lora_hotswap`: the adapter's weights are swapped in place, nothing is rebuilt),
    each user's images in one batched call. The same synthetic adapters as the seeded ones (loadtest/seed.py).
    Images/s."""
    import numpy as np
    import torch

    from faceharmony.core.diffusion.pipeline import fingerprint_folder
    from faceharmony.loadtest.seed import layer_shapes, synthetic_adapter

    shapes, fingerprint = layer_shapes(base_dir), fingerprint_folder(base_dir)
    folder = tmp / "hotswap"
    folder.mkdir()
    for i in range(users):
        data = synthetic_adapter(shapes, 4, fingerprint, np.random.default_rng([1, i]))
        (folder / f"user{i}.safetensors").write_bytes(data)
    pipe.enable_lora_hotswap(target_rank=4)
    pipe.load_lora_weights(folder, weight_name="user0.safetensors", adapter_name="user")

    def one_user(i: int) -> None:
        if i:
            pipe.load_lora_weights(folder, weight_name=f"user{i}.safetensors", adapter_name="user", hotswap=True)
        pipe(
            "a portrait photo of sks person, studio lighting",
            num_images_per_prompt=per_user,
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            height=args.size,
            width=args.size,
            generator=[torch.Generator("cpu").manual_seed(i * 10 + j) for j in range(per_user)],
            output_type="np",
        )

    one_user(0)  # warm-up
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(users):
        one_user(i)
    sync()
    return users * per_user / (time.perf_counter() - t0)


def users_target_class():
    from faceharmony.loadtest.triton_target import TritonTarget, request_seed

    class PerUser(TritonTarget):
        """Request i is image i % per_user of user i // per_user (each user's images together, as orders are)."""

        per_user = 2

        def pick(self, index: int):
            user = (index // self.per_user) % len(self.manifest.models)
            return self.manifest.models[user], self.prompts[0], request_seed(self.seed, index)

    return PerUser


def step_figures(step: dict) -> dict:
    lat = step["latency_ms"]
    return {
        "p50_ms": lat.get("p50"),
        "p95_ms": lat.get("p95"),
        "p99_ms": lat.get("p99"),
        "images_per_s": step["images_per_s"],
        "failed": step["failed"],
    }


def comparison_figure(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for model, style in ((REQUEST_LEVEL, "o-"), (CONTINUOUS, "s-")):
        mine = [r for r in rows if r["model"] == model]
        loads = [r["load"] * 100 for r in mine]
        for q, alpha in (("p50_ms", 0.5), ("p95_ms", 1.0)):
            ax1.plot(loads, [r[q] for r in mine], style, alpha=alpha, label=f"{model} {q[:3]}")
        ax2.plot(loads, [r["images_per_s"] for r in mine], style, label=model)
    ax1.set(xlabel="offered load (% of today's saturation)", ylabel="latency (ms)", title="Latency under Poisson load")
    ax2.set(xlabel="offered load (% of today's saturation)", ylabel="images/s", title="Throughput")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=16, help="distinct adapters")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop requests in flight (saturation)")
    parser.add_argument("--count", type=int, default=60, help="requests per step")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/continuous"))
    parser.add_argument("--users", type=int, default=32, help="users in flight against the hot-swap pipeline")
    parser.add_argument("--per-user", type=int, default=2, help="images per user (one batch in the baseline)")
    args = parser.parse_args()

    import torch

    from faceharmony.core.diffusion.pipeline import build_tiny_pipeline
    from faceharmony.core.keys.factory import install_keyring
    from faceharmony.core.settings import Settings
    from faceharmony.loadtest.plots import plot_report
    from faceharmony.loadtest.report import write_json
    from faceharmony.loadtest.seed import seed_models
    from faceharmony.loadtest.sweep import Plan
    from faceharmony.triton_launcher.server import start_triton

    print("\n".join(machine_lines(torch.device("cpu"))))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-continuous-") as tmp:
        data = Path(tmp) / "data"
        build_tiny_pipeline(data / "base-model", seed=0)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
        env["FACEHARMONY_DATA_DIR"] = str(data)
        os.environ["FACEHARMONY_DATA_DIR"] = str(data)
        settings = Settings.from_env()
        keyring = install_keyring(settings)
        manifest = seed_models(settings, args.models, Path(tmp) / "manifest.json", keyring, seed=0)
        with start_triton(Path(tmp) / "triton", models=[REQUEST_LEVEL, CONTINUOUS], env=env, ready_timeout=180) as srv:
            url = srv.grpc_url
            saturation = {}
            reports = {}
            for model in (REQUEST_LEVEL, CONTINUOUS):
                plan = Plan(concurrencies=[args.concurrency], count=args.count, duration_s=300, warmup=4)
                report = run_model(url, model, manifest, keyring, args, plan, f"saturation, {model}")
                saturation[model] = report["steps"][0]["images_per_s"]
                reports[f"{model}-saturation"] = report
                print(f"saturation {model}: {saturation[model]:.2f} images/s at concurrency {args.concurrency}")
            rates = [round(saturation[REQUEST_LEVEL] * load, 3) for load in LOADS]
            rows = []
            for model in (REQUEST_LEVEL, CONTINUOUS):
                plan = Plan(rates=rates, count=args.count, duration_s=300, warmup=0, max_inflight=64, seed=7)
                report = run_model(url, model, manifest, keyring, args, plan, f"open loop, {model}")
                reports[f"{model}-open"] = report
                for load, step in zip(LOADS, report["steps"]):
                    rows.append({"model": model, "load": load, "rate": step.get("rate"), **step_figures(step)})
            # The order path at --users users in flight vs one hot-swapping diffusers pipeline.
            users_manifest = seed_models(settings, args.users, Path(tmp) / "users.json", keyring, seed=1)
            per_user_target = users_target_class()
            per_user_target.per_user = args.per_user
            in_flight = args.users * args.per_user
            hotswap = {}
            for model in (REQUEST_LEVEL, CONTINUOUS):
                plan = Plan(concurrencies=[in_flight], count=in_flight, duration_s=600, warmup=0)
                report = run_model(
                    url, model, users_manifest, keyring, args, plan, f"{args.users} users", per_user_target
                )
                reports[f"{model}-users"] = report
                hotswap[model] = report["steps"][0]["images_per_s"]
                assert report["steps"][0]["failed"] == 0, report["steps"][0]
        from bench_engine import reference_pipeline

        pipe = reference_pipeline(data / "base-model", torch.device("cpu"), torch.float32, None)
        hotswap["diffusers_hotswap"] = hotswap_baseline(
            pipe, data / "base-model", Path(tmp), args.users, args.per_user, args
        )
    for name, report in reports.items():
        write_json(args.out / f"{name}.json", report)
        plot_report(report, args.out / name)
    figure = comparison_figure(rows, args.out / "comparison.png")

    print(
        f"\n{args.models} adapters, {args.size}x{args.size}, {args.steps} steps; open loop: {args.count} requests a step"
    )
    print(
        f"{'load':>5} {'rate/s':>7} | {'request-level p50/p95/p99 ms':>30} {'img/s':>6} | {'continuous p50/p95/p99 ms':>27} {'img/s':>6} | p95 ratio"
    )
    by = {(r["model"], r["load"]): r for r in rows}
    for load, rate in zip(LOADS, rates):
        a, b = by[(REQUEST_LEVEL, load)], by[(CONTINUOUS, load)]
        fa = f"{a['p50_ms']:.0f}/{a['p95_ms']:.0f}/{a['p99_ms']:.0f}"
        fb = f"{b['p50_ms']:.0f}/{b['p95_ms']:.0f}/{b['p99_ms']:.0f}"
        print(
            f"{load * 100:4.0f}% {rate:7.2f} | {fa:>30} {a['images_per_s']:6.2f} | {fb:>27} {b['images_per_s']:6.2f} | "
            f"{b['p95_ms'] / a['p95_ms']:.2f}x"
        )
        assert a["failed"] == 0 and b["failed"] == 0, (a, b)
    print(
        f"saturation throughput: request-level {saturation[REQUEST_LEVEL]:.2f} images/s, continuous "
        f"{saturation[CONTINUOUS]:.2f} images/s: {saturation[CONTINUOUS] / saturation[REQUEST_LEVEL]:.2f}x"
    )
    base_rate = hotswap["diffusers_hotswap"]
    print(
        f"{args.users} users x {args.per_user} images in flight: diffusers hot-swap pipeline {base_rate:.2f} images/s; "
        f"request-level {hotswap[REQUEST_LEVEL]:.2f} ({hotswap[REQUEST_LEVEL] / base_rate:.2f}x); "
        f"continuous {hotswap[CONTINUOUS]:.2f} ({hotswap[CONTINUOUS] / base_rate:.2f}x)"
    )
    summary = {"saturation": saturation, "rows": rows, "users": hotswap}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"reports, plots and {figure.name} in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
