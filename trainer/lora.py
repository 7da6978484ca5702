"""DreamBooth-style LoRA fine-tuning of a loaded base pipeline, and the adapter's wire format.

Owns:

* `TrainingSettings`: rank, alpha, steps, learning rate, batch size, resolution, trigger token, class word,
  seed, flips and target modules, with defaults documented on each field.
* `prepare_images(jpegs, resolution)`: decode, EXIF-orient, RGB, resize the shorter side, center-crop, scale
  to [-1, 1], NCHW float32.
* `train_lora(base, jpegs, settings, on_progress, should_stop)`: attaches a peft LoRA to the UNet attention
  projections of the shared base, trains it with the noise-prediction MSE against latents and the prompt
  embedding computed once up front, serializes it, and always detaches it again (`unload_lora`), so the base
  UNet is left exactly as it was loaded, also after an error or a cancellation.
* Writing the adapter (core/diffusion/adapter_format.py has the format): the safetensors file
  `StableDiffusionPipeline.save_lora_weights` writes (float32), which `pipe.load_lora_weights` accepts as a
  file or, through `load_adapter_bytes`, as a dict. The LoRA scale alpha/rank is folded into the `up`
  matrices and the file declares lora_alpha == rank, so every loading path (file, dict, hot-swap) applies the
  same weights whatever alpha was trained with. The training metadata is embedded in the header.
* `load_adapter_bytes(data)`: validates such a payload (one rank across the file, too) and raises
  `CorruptAdapter` for anything else.

The adapter is serialized in memory (diffusers' `save_lora_weights` writes only into a folder, which would
put a person's adapter in a file in the clear): the same tensors and header, made with diffusers' packing.

Randomness (LoRA init, latent sampling, noise, timesteps, batch order) all comes from the settings' seed via
a private CPU generator, so training on the CPU is bit-for-bit repeatable and the global RNG is untouched.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from faceharmony.core.diffusion.adapter_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    AdapterCorrupt,
    adapter_metadata,
    adapter_ranks,
    encode_adapter,
    parse_adapter_bytes,
)
from faceharmony.core.diffusion.pipeline import BasePipeline

ADAPTER_NAME = "faceharmony_training"  # the peft adapter name while training (not written to the file)
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


class TrainingCancelled(Exception):
    """`should_stop()` returned True; nothing was produced and the base is restored."""


class PhotoUnreadable(ValueError):
    """The photos cannot be trained on (none given, or one cannot be decoded): retrying will not help."""


# The bytes are not a LoRA adapter of the form `train_lora` writes: the format and its reader live in core
# (the order side reads adapters too); the trainer's name for its error is kept.
CorruptAdapter = AdapterCorrupt


@dataclass
class TrainingSettings:
    """How one adapter is trained. Defaults suit the tiny pipeline on a CPU and are sane for SD 1.5.

    steps=200 at batch 2 is 400 sampled images (the usual ~100 per photo for 4 photos), i.e. 50 passes over
    4 photos plus their flips: on the tiny pipeline 9-12 s on a 2-core CPU (well under a minute). For a
    real SD 1.5 base, DreamBooth LoRA usually wants 400-1000 steps at this learning rate; the operator
    raises `steps` in configuration.
    """

    rank: int = 4
    alpha: float | None = None  # None: equal to rank (LoRA scale 1.0)
    steps: int = 200
    learning_rate: float = 1e-4  # AdamW, constant schedule: the usual DreamBooth-LoRA value
    batch_size: int = 2
    resolution: int | None = None  # None: the base's native resolution
    trigger_token: str = "sks"
    class_word: str = "person"
    seed: int = 0
    flip: bool = True  # also train on horizontally flipped copies of every photo
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False  # trades speed for memory on large bases

    def __post_init__(self) -> None:
        if self.alpha is None:
            self.alpha = float(self.rank)
        self.target_modules = tuple(self.target_modules)
        problems = []
        if not (isinstance(self.rank, int) and self.rank >= 1):
            problems.append("rank must be a positive integer")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            problems.append("alpha must be positive")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            problems.append("steps must be a positive integer")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            problems.append("learning_rate must be positive")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            problems.append("batch_size must be a positive integer")
        if self.resolution is not None and not (isinstance(self.resolution, int) and self.resolution >= 8):
            problems.append("resolution must be None or an integer >= 8")
        if not re.fullmatch(r"[a-z0-9]{1,32}", self.trigger_token or ""):
            problems.append("trigger_token must be 1-32 lowercase letters or digits")
        if not re.fullmatch(r"[a-z][a-z ]{0,31}", self.class_word or ""):
            problems.append("class_word must be 1-32 lowercase letters")
        if not self.target_modules:
            problems.append("target_modules must not be empty")
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))

    @property
    def prompt(self) -> str:
        return f"a photo of {self.trigger_token} {self.class_word}"


@dataclass
class TrainedAdapter:
    """A trained LoRA: the safetensors payload, its metadata, and how training went."""

    safetensors: bytes
    metadata: dict
    final_loss: float  # mean loss over the last min(10, steps) steps (a single step's loss is mostly noise)
    steps: int
    losses: list[float] = field(default_factory=list)  # every step's loss, in order
    timings: dict[str, float] = field(default_factory=dict)  # seconds: prepare, cache, train, serialize


# --------------------------------------------------------------------------------------------------------
# Images


def prepare_images(jpegs: list[bytes], resolution: int) -> torch.Tensor:
    """Decode photos into a float32 tensor (N, 3, resolution, resolution) in [-1, 1].

    EXIF orientation is applied, the shorter side resized to `resolution` (bicubic) and the center cropped.
    Raises PhotoUnreadable (a ValueError) naming the photo's position when one cannot be decoded (never its bytes).
    """
    if resolution < 1:
        raise ValueError("resolution must be positive")
    out = np.empty((len(jpegs), resolution, resolution, 3), dtype=np.uint8)
    for i, data in enumerate(jpegs):
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.draft("RGB", (resolution, resolution))  # JPEG: decode at a reduced scale when large
                img = ImageOps.exif_transpose(img).convert("RGB")
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad input
            raise PhotoUnreadable(f"photo {i} cannot be decoded: {type(exc).__name__}") from None
        w, h = img.size
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        out[i] = np.asarray(img.crop((left, top, left + resolution, top + resolution)))
    pixels = torch.from_numpy(out).permute(0, 3, 1, 2).float()
    return (pixels / 127.5 - 1.0).contiguous()


# --------------------------------------------------------------------------------------------------------
# Training


def _check_resolution(base: BasePipeline, resolution: int) -> None:
    multiple = base.vae_scale_factor * 2 ** (len(base.unet.config.block_out_channels) - 1)
    if resolution % multiple:
        raise ValueError(f"resolution {resolution} must be a multiple of {multiple} for this base model")


@torch.no_grad()
def encode_latent_distribution(
    base: BasePipeline, pixels: torch.Tensor, chunk: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE-encode pixels once: the (mean, std) of the scaled latent distribution, float32 on base.device."""
    means, stds = [], []
    scale = base.vae.config.scaling_factor
    shift = getattr(base.vae.config, "shift_factor", None) or 0.0
    for start in range(0, pixels.shape[0], chunk):
        batch = pixels[start : start + chunk].to(base.device, torch.float32)
        dist = base.vae.encode(batch).latent_dist
        means.append((dist.mean - shift) * scale)
        stds.append(dist.std * scale)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def encode_prompt(base: BasePipeline, prompt: str) -> torch.Tensor:
    """The text encoder's last hidden state for `prompt`, shape (1, 77, dim), in base.dtype."""
    ids = base.tokenizer(
        prompt,
        padding="max_length",
        max_length=base.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(base.device)
    return base.text_encoder(ids)[0].to(base.dtype)


def _library_versions() -> dict[str, str]:
    import diffusers
    import peft
    import safetensors
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }


def _serialize(base: BasePipeline, settings: TrainingSettings, metadata: dict, scratch_dir: Path | None) -> bytes:
    """The attached adapter as diffusers-format LoRA safetensors bytes, alpha folded into `up`, made in memory:
    the same tensors and header `StableDiffusionPipeline.save_lora_weights` writes into a folder (its public
    `pack_weights` and the LoRA-metadata key), so no adapter is ever in a file in the clear (issue 12).
    `scratch_dir` is kept for the callers; nothing is written there."""
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = base.unet
    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    state = convert_state_dict_to_diffusers(state)
    fold = float(settings.alpha) / settings.rank
    tensors = {}
    for key, value in state.items():
        value = value.detach().to("cpu", torch.float32)
        if fold != 1.0 and key.endswith(".lora.up.weight"):
            value = value * fold
        tensors[key] = value.contiguous()
    lora_config = unet.peft_config[ADAPTER_NAME].to_dict()
    lora_config["lora_alpha"] = settings.rank  # the scale is already inside the `up` weights
    lora_config["target_modules"] = sorted(lora_config["target_modules"])
    packed = StableDiffusionPipeline.pack_weights(tensors, StableDiffusionPipeline.unet_name)
    prefixed = {
        f"{StableDiffusionPipeline.unet_name}.{key}": sorted(value) if isinstance(value, set) else value
        for key, value in lora_config.items()
    }
    header = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(prefixed, indent=2, sort_keys=True)}
    return encode_adapter({k: v.contiguous() for k, v in packed.items()}, header, metadata)


def train_lora(
    base: BasePipeline,
    jpegs: list[bytes],
    settings: TrainingSettings,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    scratch_dir: Path | None = None,
) -> TrainedAdapter:
    """Train one LoRA adapter on `jpegs` over the shared `base`; the base is unchanged afterwards.

    `scratch_dir` is where the adapter is serialized for a moment (the trainer: its data folder's scratch
    folder; None, for synthetic data only: the system's temporary folder).

    `on_progress(step, total)` is called after every step (1..total); `should_stop()` before every step and
    before the expensive preparation: when it returns True, TrainingCancelled is raised at once. Raises
    PhotoUnreadable (a ValueError) for no photos or an undecodable photo, ValueError for a resolution the
    base cannot take.
    """
    from peft import LoraConfig

    if not jpegs:
        raise PhotoUnreadable("no photos to train on")
    resolution = settings.resolution or base.resolution
    _check_resolution(base, resolution)
    total = settings.steps

    def check_stop(done: int) -> None:
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"training stopped after {done} of {total} steps")

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    check_stop(0)
    pixels = prepare_images(jpegs, resolution)
    if settings.flip:
        pixels = torch.cat([pixels, pixels.flip(-1)])
    timings["prepare"] = time.perf_counter() - t0

    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    device, dtype = base.device, base.dtype
    unet = base.unet
    scheduler = base.noise_scheduler
    use_autocast = device.type == "cuda" and dtype != torch.float32

    with base.lock:
        if has_adapter(unet):  # unload_lora below would remove it too: refuse rather than damage the base
            raise RuntimeError("the base UNet already carries a LoRA adapter; train only on a clean base")
        t0 = time.perf_counter()
        latent_mean, latent_std = encode_latent_distribution(base, pixels)
        prompt_embeds = encode_prompt(base, settings.prompt)
        timings["cache"] = time.perf_counter() - t0
        check_stop(0)

        was_training = unet.training
        frozen = {name: p.requires_grad for name, p in unet.named_parameters()}
        unet.requires_grad_(False)
        try:
            t0 = time.perf_counter()
            config = LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                lora_dropout=0.0,
                init_lora_weights="gaussian",
                target_modules=list(settings.target_modules),
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed)
                unet.add_adapter(config, adapter_name=ADAPTER_NAME)
            params = [p for p in unet.parameters() if p.requires_grad]
            for p in params:  # LoRA weights train in float32 even when the base runs in bf16/fp16
                p.data = p.data.float()
            if settings.gradient_checkpointing:
                unet.enable_gradient_checkpointing()
            unet.train()
            optimizer = torch.optim.AdamW(
                params, lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=settings.weight_decay
            )
            scaler = torch.amp.GradScaler("cuda") if use_autocast and dtype == torch.float16 else None
            num_timesteps = scheduler.config.num_train_timesteps
            prediction_type = scheduler.config.prediction_type
            bs = settings.batch_size
            draws = _RandomDraws(
                generator, latent_mean.shape[0], bs, tuple(latent_mean.shape[1:]), num_timesteps, device
            )
            step_losses: list[torch.Tensor] = []

            for step in range(1, total + 1):
                check_stop(step - 1)
                idx, eps_latent, noise, timesteps = draws.next(remaining=total - step + 1)
                latents = latent_mean[idx] + latent_std[idx] * eps_latent
                noisy = scheduler.add_noise(latents, noise, timesteps)
                if prediction_type == "v_prediction":
                    target = scheduler.get_velocity(latents, noise, timesteps)
                else:
                    target = noise
                with torch.autocast(device.type, dtype=dtype, enabled=use_autocast):
                    pred = unet(
                        noisy.to(dtype), timesteps, encoder_hidden_states=prompt_embeds.expand(bs, -1, -1)
                    ).sample
                loss = F.mse_loss(pred.float(), target.float())
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
                step_losses.append(loss.detach())
                if on_progress is not None:
                    on_progress(step, total)
            losses = torch.stack(step_losses).float().cpu().tolist()
            timings["train"] = time.perf_counter() - t0
            if not all(math.isfinite(x) for x in losses):
                raise FloatingPointError("training diverged (non-finite loss)")

            t0 = time.perf_counter()
            metadata = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "base_fingerprint": base.fingerprint,
                "rank": settings.rank,
                "alpha": float(settings.alpha),
                "alpha_folded_into_up": True,
                "trigger_token": settings.trigger_token,
                "class_word": settings.class_word,
                "prompt": settings.prompt,
                "steps": total,
                "learning_rate": settings.learning_rate,
                "batch_size": bs,
                "resolution": resolution,
                "seed": settings.seed,
                "flip": settings.flip,
                "target_modules": list(settings.target_modules),
                "num_images": len(jpegs),
                "library_versions": _library_versions(),
            }
            data = _serialize(base, settings, metadata, scratch_dir)
            timings["serialize"] = time.perf_counter() - t0
        finally:
            _detach_adapter(base, frozen, was_training, settings.gradient_checkpointing)

    window = losses[-min(10, len(losses)) :]
    return TrainedAdapter(
        safetensors=data,
        metadata=metadata,
        final_loss=float(sum(window) / len(window)),
        steps=total,
        losses=losses,
        timings=timings,
    )


class _RandomDraws:
    """Per-step randomness (batch indices, latent sample, noise, timesteps) from one CPU generator.

    Drawn in the same order as step-by-step drawing would, but `chunk` steps at a time and moved to the
    device in one copy each: a host-to-device copy per step would make the CPU wait for the GPU every step.
    Batches walk through random permutations of the cached images, so every image is seen equally often.
    """

    def __init__(self, generator, n, bs, shape, num_timesteps, device, chunk: int = 32):
        self.g, self.n, self.bs, self.shape = generator, n, bs, shape
        self.num_timesteps, self.device, self.chunk = num_timesteps, device, chunk
        self.order: list[int] = []
        self.buffer: list[tuple[torch.Tensor, ...]] = []

    def _draw_one(self) -> tuple[torch.Tensor, ...]:
        while len(self.order) < self.bs:
            self.order.extend(torch.randperm(self.n, generator=self.g).tolist())
        idx = torch.tensor(self.order[: self.bs])
        del self.order[: self.bs]
        eps = torch.randn((self.bs, *self.shape), generator=self.g)
        noise = torch.randn((self.bs, *self.shape), generator=self.g)
        t = torch.randint(0, self.num_timesteps, (self.bs,), generator=self.g)
        return idx, eps, noise, t

    def next(self, remaining: int) -> tuple[torch.Tensor, ...]:
        if not self.buffer:
            steps = [self._draw_one() for _ in range(min(self.chunk, remaining))]
            stacked = [torch.stack(parts).to(self.device) for parts in zip(*steps)]
            self.buffer = list(zip(*stacked))[::-1]
        return self.buffer.pop()


def _detach_adapter(base: BasePipeline, frozen: dict[str, bool], was_training: bool, checkpointing: bool) -> None:
    """Remove every LoRA layer from the base UNet (peft wrappers replaced by the original modules)."""
    unet = base.unet
    if checkpointing:
        unet.disable_gradient_checkpointing()
    if getattr(unet, "peft_config", None):
        unet.unload_lora()
    for name, p in unet.named_parameters():
        p.requires_grad_(frozen.get(name, False))
        p.grad = None
    unet.train(was_training)


def has_adapter(unet: torch.nn.Module) -> bool:
    """Whether any peft layer is attached to `unet` (used by tests and sanity checks)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())


# --------------------------------------------------------------------------------------------------------
# Reading adapters back


def load_adapter_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Parse and validate adapter bytes; the state dict `pipe.load_lora_weights` accepts.

    The format checks are core's (`parse_adapter_bytes`); an adapter the trainer wrote also has one rank
    across the file. Anything else raises CorruptAdapter.
    """
    tensors = parse_adapter_bytes(data)
    ranks = adapter_ranks(tensors)
    if len(ranks) != 1:
        raise CorruptAdapter(f"adapter mixes ranks {sorted(ranks)}")
    return tensors


def read_adapter_metadata(data: bytes) -> dict:
    """The training metadata embedded in adapter bytes, validated first (CorruptAdapter); {} when none is embedded.

    The header is read by core's reader, the one the order side uses: embedded metadata that is not a JSON
    object also reads as {}.
    """
    load_adapter_bytes(data)
    return adapter_metadata(data)


__all__ = [
    "CorruptAdapter",
    "PhotoUnreadable",
    "TrainedAdapter",
    "TrainingCancelled",
    "TrainingSettings",
    "load_adapter_bytes",
    "prepare_images",
    "read_adapter_metadata",
    "train_lora",
]
