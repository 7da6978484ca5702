"""Seconds per LoRA training step and time-to-model of the trainer's ML core, against a plain loop, in one run.

    .venv/bin/python benchmarks/bench_training.py                 # tiny pipeline on this machine (CPU here)
    .venv/bin/python benchmarks/bench_training.py --real-size     # SD 1.5-sized, random weights, 512x512, CUDA only

Both modes train on the same four real photos (crops of skimage's astronaut, one mirrored) at the default
`TrainingSettings` (override with --steps / --batch-size), same seed, in the same process:

* project: `load_base` + `train_lora` (photos decoded once, latents and prompt embedding cached, LoRA on the
  UNet attention projections, adapter serialized and the base restored);
* baseline: a plain diffusers + peft loop written the usual way (components loaded with `from_pretrained`,
  `unet.add_adapter(LoraConfig(...))`) that, like a dataset-driven training script, decodes and flips the
  batch's photos, VAE-encodes them and text-encodes the prompt on every step, then saves the adapter with
  `save_lora_weights` into a temporary folder and reads it back.

time-to-model = load + prepare + cache + all steps + serialize (building the base folder is not counted).
Before the timed runs each variant runs once for `--warmup` steps so one-off start-up costs hit neither;
then the two alternate `--repeats` times (default 2) and the best run of each is reported, since a small
shared VM drifts by 10-20 % between runs. Ratios are baseline / project (> 1: the project is faster).

`--real-size` builds SD 1.5's architecture (UNet2DConditionModel 320/640/1280/1280, cross-attention 768;
SD's AutoencoderKL; a 12-layer, 768-wide CLIP text encoder) with random weights, saves it as an fp16
variant diffusers folder and loads it through the same `load_base`, so the compute is the real model's.
It needs CUDA (bf16, or fp16 where bf16 is unsupported); without CUDA it says so and exits 0
(`--allow-cpu --resolution 128 --steps 2` smoke-tests the code path on a CPU).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no torchvision-fallback notices in the output

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

try:
    import faceharmony.trainer  # noqa: F401
except ImportError:  # a machine without the project installed (the GPU box): map the packages by hand
    import importlib.util
    import types

    _root = Path(__file__).resolve().parents[1]
    sys.modules["faceharmony"] = types.ModuleType("faceharmony")
    sys.modules["faceharmony"].__path__ = []  # type: ignore[attr-defined]
    for _name, _folder in (("faceharmony.core", "core"), ("faceharmony.trainer", "trainer")):
        _spec = importlib.util.spec_from_file_location(
            _name, _root / _folder / "__init__.py", submodule_search_locations=[str(_root / _folder)]
        )
        _module = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
        sys.modules[_name] = _module
        _spec.loader.exec_module(_module)  # type: ignore[union-attr]

from faceharmony.core.diffusion.pipeline import (
    build_tiny_pipeline,
    load_base,
    pick_device,
    train_tokenizer_vocab,
)
from faceharmony.trainer.lora import TrainingSettings, prepare_images, train_lora


def machine_lines(device: torch.device) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    lines = [
        f"machine: {platform.machine()}, {cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
    ]
    try:
        import diffusers
        import peft
        import transformers

        lines.append(
            f"libraries: torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}, "
            f"transformers {transformers.__version__}"
        )
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    else:
        lines.append("gpu: none used (CPU run)")
    return lines


def astronaut_photos() -> list[bytes]:
    """Four 512 px JPEGs of one face (skimage's astronaut); a drawn face where scikit-image is missing."""
    try:
        from skimage import data as skdata

        img = Image.fromarray(skdata.astronaut())
    except ImportError:
        print("scikit-image missing: training on a drawn face instead of the astronaut photo (timing unaffected)")
        img = Image.new("RGB", (512, 512), (70, 90, 140))
        draw = ImageDraw.Draw(img)
        draw.ellipse((150, 60, 380, 340), fill=(225, 185, 160))
        draw.ellipse((200, 160, 240, 190), fill=(40, 40, 60))
        draw.ellipse((290, 160, 330, 190), fill=(40, 40, 60))
        draw.arc((220, 230, 310, 290), 20, 160, fill=(150, 60, 60), width=6)
    crops = [
        img.crop((100, 0, 400, 300)),
        img.crop((120, 20, 420, 320)),
        img.crop((80, 10, 380, 310)).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        img.crop((130, 0, 410, 360)),
    ]
    out = []
    for c in crops:
        buf = io.BytesIO()
        c.resize((512, 512), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------
# The two variants


def run_project(folder: Path, photos: list[bytes], settings: TrainingSettings, device: str) -> dict[str, float]:
    t0 = time.perf_counter()
    base = load_base(folder, device=device)
    _sync(base.device)
    load = time.perf_counter() - t0
    result = train_lora(base, photos, settings)
    total = time.perf_counter() - t0
    t = result.timings
    out = {
        "load": load,
        "prepare+cache": t["prepare"] + t["cache"],
        "train": t["train"],
        "serialize": t["serialize"],
        "time_to_model": total,
        "sec_per_step": t["train"] / result.steps,
        "loss": result.final_loss,
        "bytes": len(result.safetensors),
    }
    del base
    return out


def run_baseline(folder: Path, photos: list[bytes], settings: TrainingSettings, device: str) -> dict[str, float]:
    """A plain diffusers+peft DreamBooth-LoRA loop with no caching: everything recomputed each step."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel, CLIPTokenizer

    dev, dtype = pick_device(device)
    # A plain script runs the VAE in the training dtype when that is bf16; fp16 would overflow SD's VAE.
    vae_dtype = dtype if dtype == torch.bfloat16 else torch.float32
    t0 = time.perf_counter()
    variant = "fp16" if (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists() else None
    kw = {"local_files_only": True, "variant": variant}
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=dtype, **kw).to(dev)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=vae_dtype, **kw).to(dev)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype, **kw).to(dev)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
    _sync(dev)
    load = time.perf_counter() - t0

    t1 = time.perf_counter()
    torch.manual_seed(settings.seed)
    unet.add_adapter(
        LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            init_lora_weights="gaussian",
            target_modules=list(settings.target_modules),
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    use_autocast = dev.type == "cuda" and dtype != torch.float32
    scaler = torch.amp.GradScaler("cuda") if use_autocast and dtype == torch.float16 else None
    resolution = settings.resolution or unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    g = torch.Generator().manual_seed(settings.seed)
    bs = settings.batch_size
    for _ in range(settings.steps):
        idx = torch.randint(0, len(photos), (bs,), generator=g).tolist()
        pixels = prepare_images([photos[i] for i in idx], resolution)
        flips = torch.rand(bs, generator=g) < 0.5
        if settings.flip:
            pixels = torch.where(flips[:, None, None, None], pixels.flip(-1), pixels)
        with torch.no_grad():
            latents = vae.encode(pixels.to(dev, vae_dtype)).latent_dist.sample() * vae.config.scaling_factor
            ids = tokenizer(
                [settings.prompt] * bs,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(dev)
            embeds = text_encoder(ids)[0]
        latents = latents.float()
        noise = torch.randn(latents.shape, generator=g).to(dev)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bs,), generator=g).to(dev)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(dev.type, dtype=dtype, enabled=use_autocast):
            pred = unet(noisy.to(dtype), timesteps, encoder_hidden_states=embeds).sample
        loss = F.mse_loss(pred.float(), noise)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    final_loss = loss.item()
    _sync(dev)
    train = time.perf_counter() - t1

    t2 = time.perf_counter()
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=state, safe_serialization=True)
        payload = (Path(tmp) / "pytorch_lora_weights.safetensors").read_bytes()
    serialize = time.perf_counter() - t2
    return {
        "load": load,
        "prepare+cache": 0.0,
        "train": train,
        "serialize": serialize,
        "time_to_model": time.perf_counter() - t0,
        "sec_per_step": train / settings.steps,
        "loss": final_loss,
        "bytes": len(payload),
    }


# --------------------------------------------------------------------------------------------------------
# Real-size base

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
CLIP_L_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


def build_real_size_pipeline(folder: Path, device: torch.device) -> None:
    """SD 1.5's architecture with random weights, saved as an fp16-variant diffusers folder."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = train_tokenizer_vocab()  # SD's 49k-token vocabulary cannot be downloaded; ids fit CLIP-L's
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **CLIP_L_TEXT,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    for m in (unet, vae, text_encoder):
        m.to("cpu").half()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True, variant="fp16")
    print(
        f"real-size base: UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M, "
        f"VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.0f} M, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.0f} M parameters (fp16 on disk)"
    )


# --------------------------------------------------------------------------------------------------------


def report(title: str, project: dict[str, float], baseline: dict[str, float]) -> None:
    print(title)
    cols = ("load", "prepare+cache", "train", "serialize", "time_to_model", "sec_per_step")
    print(f"  {'variant':<22}" + "".join(f"{c:>15}" for c in cols) + f"{'final loss':>12}{'adapter B':>11}")
    for name, r in (("project (cached)", project), ("baseline (plain loop)", baseline)):
        print(f"  {name:<22}" + "".join(f"{r[c]:>14.3f}s" for c in cols) + f"{r['loss']:>12.4f}{int(r['bytes']):>11}")
    print(
        f"  ratio baseline/project: sec/step {baseline['sec_per_step'] / project['sec_per_step']:.2f}x, "
        f"time-to-model {baseline['time_to_model'] / project['time_to_model']:.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real-size", action="store_true", help="SD 1.5-sized random-weight base at 512x512 (CUDA)")
    parser.add_argument("--allow-cpu", action="store_true", help="let --real-size run on a CPU (smoke test only)")
    parser.add_argument("--resolution", type=int, default=None, help="training resolution (default: the base's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: TrainingSettings')")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: TrainingSettings')")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per variant")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per variant; the best is reported")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()

    defaults = TrainingSettings()
    overrides = {
        "steps": args.steps or defaults.steps,
        "batch_size": args.batch_size or defaults.batch_size,
        "resolution": args.resolution,
    }
    settings = TrainingSettings(**overrides)
    warm = TrainingSettings(**{**overrides, "steps": max(1, args.warmup)})

    if args.real_size and not torch.cuda.is_available() and not args.allow_cpu:
        print("--real-size needs a CUDA GPU and none is available here: nothing measured (use the GPU machine).")
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dev, dtype = pick_device(device)
    for line in machine_lines(dev):
        print(line)

    photos = astronaut_photos()
    with tempfile.TemporaryDirectory(prefix="faceharmony-bench-") as tmp:
        folder = Path(tmp) / "base"
        t0 = time.perf_counter()
        if args.real_size:
            build_real_size_pipeline(folder, dev)
        else:
            build_tiny_pipeline(folder, seed=0)
        print(f"built the base folder in {time.perf_counter() - t0:.1f}s (not counted)")
        kind = "SD 1.5-sized UNet/VAE/text encoder, random weights" if args.real_size else "tiny pipeline"
        res = settings.resolution or ("512" if args.real_size else "256")
        print(
            f"settings: steps {settings.steps}, batch {settings.batch_size}, resolution {res}, rank {settings.rank}, "
            f"lr {settings.learning_rate}, 4 photos + flips, device {dev.type}, dtype {str(dtype).removeprefix('torch.')}"
        )
        run_project(folder, photos, warm, device)
        run_baseline(folder, photos, warm, device)
        projects, baselines = [], []
        for _ in range(args.repeats):  # alternated, so drift in the machine's speed hits both alike
            projects.append(run_project(folder, photos, settings, device))
            baselines.append(run_baseline(folder, photos, settings, device))
        for name, runs in (("project", projects), ("baseline", baselines)):
            print(f"  {name} time-to-model per run: " + ", ".join(f"{r['time_to_model']:.2f}s" for r in runs))
        best = lambda runs: min(runs, key=lambda r: r["time_to_model"])  # noqa: E731
        report(f"{kind} on {dev.type}, best of {args.repeats}:", best(projects), best(baselines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
