"""Images per second of the per-user inference engine against swapping adapters the ordinary diffusers way.

    .venv/bin/python benchmarks/bench_engine.py                 # tiny pipeline on this machine (CPU here)
    .venv/bin/python benchmarks/bench_engine.py --real-size     # SD 1.5-sized, random weights, 512x512, CUDA only

Default (tiny pipeline, 256 px, 10 steps, guidance 7.5, 8 requests, rank-4 adapters), one process:

  (a)  diffusers, one request at a time: `pipe.load_lora_weights(adapter)`, generate, `unload_lora_weights()`
       for each of 8 requests with 8 different adapters (the adapter is already parsed in memory, so only
       the swap is counted, not storage);
  (a') the engine, one request at a time (same 8 adapters): isolates batching from the swap cost;
  (b)  the engine, one mixed batch of 8 requests with 8 different adapters;
  (c)  the engine, one batch of 8 requests that all use one adapter;
  (d)  the engine, one batch of 8 requests with no adapter.

Same prompts, seeds, steps and size everywhere. Adapter weights are random (the cost does not depend on the
values). Each variant runs once untimed (warm-up), then all variants alternate `--repeats` times and the
best time of each is reported (a small shared VM drifts between runs; the load average is printed). On a
CPU shared with other busy processes, use `--threads 1`: with more intra-op threads than free cores, small
batch-1 operators wait on descheduled sibling threads and (a)/(a') slow down 4-10x, which says nothing
about the engine.

`--real-size` builds SD 1.5's architecture (UNet 320/640/1280/1280 with cross-attention 768, SD's VAE, a
12-layer CLIP-L-sized text encoder) with random weights via bench_training's builder, loads it with
`load_base` (UNet and text encoder bf16, fp16 where bf16 is unsupported; the VAE is cast to the same dtype
for both the engine and the diffusers pipeline), and runs 512x512, 25 steps: the engine at batch 8 and 16
with 1, 8 and 32 distinct adapters over a stream of 32 requests, a no-adapter batch, and (a) for 8 requests.
It also measures the card's matmul rate and the UNet's FLOPs per image (torch's FlopCounterMode) and prints
the compute limit in images/s. It needs CUDA; without it, it says so and exits 0
(`--allow-cpu --size 64 --steps 1 --requests 4 --batches 2 --distinct 1,2` smoke-tests the path on a CPU).
The GPU machine has torch and transformers but not diffusers/peft: install their wheels there first
(`pip download --no-deps diffusers==0.42.1 peft==0.21.2 accelerate` here, carry, `pip install --no-deps`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no torchvision-fallback notices in the output
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

try:
    import diffusers  # noqa: F401
except ImportError:
    print(
        "diffusers is not installed on this machine: nothing measured. Install the diffusers and peft wheels "
        "(pip install --no-deps diffusers-*.whl peft-*.whl accelerate-*.whl) and rerun."
    )
    sys.exit(0)

# bench_training maps the faceharmony packages by hand where the project is not installed (the GPU box).
from bench_training import build_real_size_pipeline, machine_lines

from faceharmony.core.diffusion.engine import BatchedGenerator, GenerationRequest
from faceharmony.core.diffusion.multi_lora import target_layers
from faceharmony.core.diffusion.pipeline import build_tiny_pipeline, load_base

PROMPTS = [
    "a photo of sks person",
    "a portrait photo of sks person in a garden",
    "a headshot of sks person, studio lighting",
    "a photo of sks person on a beach at sunset",
    "a painting of sks person, oil portrait",
    "a photo of sks person in a city street at night",
    "a pencil sketch of sks person",
    "a photo of sks person wearing a suit",
]


def random_adapter(unet: torch.nn.Module, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A LoRA state dict in the trainer's format with random weights, rank `rank`, float32 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for path, module in target_layers(unet).items():
        base = getattr(module, "base", module)
        sd[f"unet.{path}.lora.down.weight"] = torch.randn(rank, base.in_features, generator=g) / base.in_features**0.5
        sd[f"unet.{path}.lora.up.weight"] = torch.randn(base.out_features, rank, generator=g) * 0.02
    return sd


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_avg() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def make_requests(adapters, n: int, steps: int, size: int, guidance: float) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            PROMPTS[i % len(PROMPTS)],
            adapters[i % len(adapters)] if adapters else None,
            negative_prompt="blurry, low quality",
            seed=1000 + i,
            steps=steps,
            guidance_scale=guidance,
            width=size,
            height=size,
        )
        for i in range(n)
    ]


def diffusers_one_at_a_time(pipe, requests: list[GenerationRequest], raw: dict[int, dict]) -> None:
    """The ordinary way: load the request's LoRA, generate, unload; per request."""
    for i, req in enumerate(requests):
        if req.adapter is not None:
            pipe.load_lora_weights(dict(raw[id(req.adapter)]), adapter_name=f"user{i}")
        pipe(
            req.prompt,
            negative_prompt=req.negative_prompt,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            width=req.width,
            height=req.height,
            generator=torch.Generator("cpu").manual_seed(req.seed),
            output_type="np",
        )
        if req.adapter is not None:
            pipe.unload_lora_weights()


def engine_run(engine: BatchedGenerator, requests: list[GenerationRequest], one_at_a_time: bool = False) -> None:
    if one_at_a_time:
        for req in requests:
            res = engine.generate([req])
            assert res[0].ok, res[0].error
    else:
        res = engine.generate(requests)
        assert all(r.ok for r in res), [r.error for r in res if not r.ok][:1]


def reference_pipeline(folder: Path, device: torch.device, dtype: torch.dtype, variant: str | None):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False, variant=variant, dtype=dtype
    )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def best_times(variants: dict[str, callable], repeats: int, device: torch.device) -> dict[str, float]:
    for fn in variants.values():  # warm-up
        fn(warm=True)
        sync(device)
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            fn(warm=False)
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


# --------------------------------------------------------------------------------------------------------


def run_tiny(args) -> None:
    device = torch.device("cpu")
    for line in machine_lines(device):
        print(line)
    print(f"start: {load_avg()}")
    with tempfile.TemporaryDirectory(prefix="faceharmony-bench-engine-") as tmp:
        folder = Path(tmp) / "base"
        build_tiny_pipeline(folder, seed=0)
        base = load_base(folder, device="cpu")
        engine = BatchedGenerator(base)
        pipe = reference_pipeline(folder, device, torch.float32, None)
        n, steps, size, g = args.requests, args.steps or 10, args.size or 256, args.guidance
        raw = [random_adapter(base.unet, args.rank, seed=i) for i in range(n)]
        prepared = [engine.prepare_adapter(sd) for sd in raw]  # what a server keeps hot (AdapterCache + prepare)
        raw_of = {id(p): sd for p, sd in zip(prepared, raw)}
        print(
            f"tiny pipeline, {size}x{size}, {steps} steps, guidance {g}, {n} requests, rank {args.rank}, "
            f"{len(target_layers(base.unet))} adapted projections, adapter {sum(t.numel() for t in raw[0].values()) * 4 / 1024:.0f} kB"
        )

        def v(requests, kind):
            def fn(warm: bool):
                reqs = [GenerationRequest(**{**r.__dict__, "steps": 1}) for r in requests[:2]] if warm else requests
                if kind == "diffusers":
                    diffusers_one_at_a_time(pipe, reqs, raw_of)
                else:
                    engine_run(engine, reqs, one_at_a_time=(kind == "engine-single"))

            return fn

        mixed = make_requests(prepared, n, steps, size, g)
        variants = {
            "(a) diffusers, swap per request": v(mixed, "diffusers"),
            "(a') engine, one request at a time": v(mixed, "engine-single"),
            "(b) engine, mixed batch, 8 adapters": v(mixed, "engine"),
            "(c) engine, batch, one adapter": v(make_requests(prepared[:1], n, steps, size, g), "engine"),
            "(d) engine, batch, no adapter": v(make_requests([], n, steps, size, g), "engine"),
        }
        best = best_times(variants, args.repeats, device)
    report(best, n)
    print(f"end: {load_avg()}")


def report(best: dict[str, float], n: int) -> None:
    print(f"{'variant':<40}{'seconds':>10}{'images/s':>10}")
    ips = {}
    for name, sec in best.items():
        ips[name.split()[0].strip("()")] = n / sec
        print(f"{name:<40}{sec:>10.3f}{n / sec:>10.3f}")
    a_single = ips["a'"]
    print(
        f"ratios: b/c = {ips['b'] / ips['c']:.3f} (goal >= 0.95), b/a = {ips['b'] / ips['a']:.2f}, "
        f"b/d = {ips['b'] / ips['d']:.3f}, a'/a = {a_single / ips['a']:.2f}"
    )


# --------------------------------------------------------------------------------------------------------


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    iters = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0)


@torch.inference_mode()
def flops_per_image(base, size: int, steps: int, guided: bool) -> tuple[float, float]:
    """(UNet FLOPs per image over all steps, VAE decode FLOPs per image), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    lat = size // base.vae_scale_factor
    x = torch.randn(1, 4, lat, lat, device=base.device, dtype=base.dtype)
    text = torch.randn(1, 77, base.unet.config.cross_attention_dim, device=base.device, dtype=base.dtype)
    with FlopCounterMode(display=False) as counter:
        base.unet(x, torch.tensor(500.0, device=base.device), encoder_hidden_states=text)
    unet = counter.get_total_flops() * steps * (2 if guided else 1)
    with FlopCounterMode(display=False) as counter:
        base.vae.decode(x.to(base.vae.dtype))
    return float(unet), float(counter.get_total_flops())


def run_real_size(args) -> None:
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("--real-size needs a CUDA GPU and none is available here: nothing measured (use the GPU machine).")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for line in machine_lines(device):
        print(line)
    steps, size, g = args.steps or 25, args.size or 512, args.guidance
    batches = [int(x) for x in args.batches.split(",")]
    distinct = [int(x) for x in args.distinct.split(",")]
    with tempfile.TemporaryDirectory(prefix="faceharmony-bench-engine-") as tmp:
        folder = Path(tmp) / "base"
        t0 = time.perf_counter()
        build_real_size_pipeline(folder, device)
        base = load_base(folder, device=device.type)
        base.vae.to(base.dtype)  # same VAE precision as the diffusers pipeline below (bf16 does not overflow)
        print(f"built and loaded the real-size base in {time.perf_counter() - t0:.1f}s; dtype {base.dtype}")
        engine = BatchedGenerator(base, max_batch=max(batches))
        raw = [random_adapter(base.unet, args.rank, seed=i) for i in range(max(distinct + [8]))]
        prepared = [engine.prepare_adapter(sd) for sd in raw]
        raw_of = {id(p): sd for p, sd in zip(prepared, raw)}
        adapter_mb = sum(t.numel() for t in raw[0].values()) * 4 / 2**20
        print(
            f"{size}x{size}, {steps} steps, guidance {g}, rank {args.rank} ({adapter_mb:.1f} MB fp32 per adapter), "
            f"{len(target_layers(base.unet))} adapted projections"
        )

        rate = matmul_rate(device, base.dtype)
        unet_flops, vae_flops = flops_per_image(base, size, steps, guided=g > 1)
        limit = rate / (unet_flops + vae_flops)
        print(
            f"compute limit: matmul {rate / 1e12:.1f} TFLOP/s measured ({base.dtype}); per image UNet "
            f"{unet_flops / 1e12:.2f} TFLOP ({steps} steps{', CFG x2' if g > 1 else ''}) + VAE decode "
            f"{vae_flops / 1e12:.2f} TFLOP -> at most {limit:.2f} images/s"
        )

        def timed(fn) -> float:
            fn(warm=True)
            best = float("inf")
            for _ in range(args.repeats):
                sync(device)
                t0 = time.perf_counter()
                fn(warm=False)
                sync(device)
                best = min(best, time.perf_counter() - t0)
            return best

        rows = []
        n_a = min(8, args.requests)
        pipe = reference_pipeline(folder, device, base.dtype, "fp16")
        seq = make_requests(prepared[:n_a], n_a, steps, size, g)
        # pipe is bound as a default: a closure would hold the name that `del pipe` below clears.
        sec = timed(lambda warm, pipe=pipe: diffusers_one_at_a_time(pipe, seq[:1] if warm else seq, raw_of))
        rows.append(("(a) diffusers, swap per request", 1, n_a, n_a, sec))
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for b in batches:
            engine.max_batch = b
            plain = make_requests([], b, steps, size, g)
            rows.append(
                (
                    "(d) engine, no adapter",
                    b,
                    0,
                    b,
                    timed(lambda warm, plain=plain: engine_run(engine, plain[:1] if warm else plain)),
                )
            )
            for d in distinct:
                n = max(args.requests, b)
                reqs = make_requests(prepared[:d], n, steps, size, g)
                sec = timed(lambda warm, reqs=reqs, b=b: engine_run(engine, reqs[:b] if warm else reqs))
                rows.append((f"engine, {d} distinct adapters", b, d, n, sec))
        print(f"{'variant':<34}{'batch':>6}{'users':>6}{'images':>7}{'seconds':>9}{'images/s':>10}{'of limit':>9}")
        for name, b, d, n, sec in rows:
            print(f"{name:<34}{b:>6}{d:>6}{n:>7}{sec:>9.2f}{n / sec:>10.3f}{n / sec / limit:>8.0%}")
        a_ips = rows[0][3] / rows[0][4]
        for _name, b, d, n, sec in rows[1:]:
            if d >= 8:
                print(f"  batch {b}, {d} users: {n / sec / a_ips:.2f}x (a)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real-size", action="store_true", help="SD 1.5-sized random-weight base at 512x512 (CUDA)")
    parser.add_argument("--allow-cpu", action="store_true", help="let --real-size run on a CPU (smoke test only)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 10 tiny, 25 real-size)")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 256 tiny, 512 real-size)")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument(
        "--requests", type=int, default=None, help="requests per variant (default 8 tiny, 32 real-size)"
    )
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per variant; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--batches", default="8,16", help="real-size: engine batch sizes")
    parser.add_argument("--distinct", default="1,8,32", help="real-size: distinct adapters in the request stream")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    if args.real_size:
        args.requests = args.requests or 32
        run_real_size(args)
    else:
        args.requests = args.requests or 8
        run_tiny(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
