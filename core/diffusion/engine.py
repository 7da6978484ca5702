"""The per-user inference engine: many requests, each with its own LoRA adapter, in one batched denoising loop.

Owns `BatchedGenerator` and its request/result types:

* `BatchedGenerator(base)` loads the shared base pipeline once (`core.diffusion.pipeline.load_base`, or takes a loaded
  `BasePipeline`) plus a sampling scheduler (EulerDiscreteScheduler built from the folder's scheduler config
  unless another is given).
* `generate(requests)` validates every request on its own (size, steps, guidance, seed, prompt, adapter),
  groups the valid ones by (steps, width, height) in arrival order, splits groups into chunks of at most
  `max_batch` requests and runs each chunk as ONE denoising loop in which every sample has its own adapter
  (multi_lora), seed, prompt, negative prompt and guidance scale. Results come back in request order; each
  is an image (uint8 HxWx3) or an error string.

The loop reproduces `StableDiffusionPipeline.__call__` per sample:
  * text: `tokenizer(padding="max_length", truncation=True)` -> text encoder last hidden state; a missing
    negative prompt is "". All distinct strings of a chunk go through the encoder in one batch.
  * classifier-free guidance only for samples with guidance_scale > 1 (as diffusers decides it). The UNet
    batch is [uncond rows of the guided samples..., cond rows of all samples]; the adapter index is
    repeated for the uncond rows, so a sample's adapter applies to both of its rows, as with peft.
    noise = uncond + g_s * (cond - uncond) per guided sample (the product in float32, like diffusers'
    Python-float scale, then back to the UNet's dtype); unguided samples use cond alone.
  * latents: per sample `torch.randn((1, C, h/8, w/8), generator=torch.Generator("cpu").manual_seed(seed))`
    in the text embeddings' dtype, exactly as diffusers' `randn_tensor` draws for a single request,
    times `init_noise_sigma`; the same per-sample generators go to `scheduler.step` (ancestral samplers).
  * VAE decode of latents / scaling_factor, `(x/2+0.5).clamp(0,1)`, `(x*255).round()` as uint8.
So an image depends only on its own request: a request gives the same image alone or in any batch, up to
floating-point differences of batched kernels (measured in tests/test_inference_engine.py).

Errors stay per request: validation failures (and an adapter that does not fit the base) are reported for
that request only and it never enters a batch. If a batched chunk still raises (e.g. out of memory), its
requests are retried one at a time, so only the request that fails alone reports an error.

One `generate` runs at a time per engine (a lock); the UNet's projections are wrapped for the duration of
a call under the base's own lock, so a `BasePipeline` shared with training is never seen wrapped by a trainer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceharmony.core.diffusion.multi_lora import AdapterMismatch, LoRAWeights, installed, prepare_lora
from faceharmony.core.diffusion.pipeline import BasePipeline, load_base

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 4000


@dataclass
class GenerationRequest:
    """One image to make. `adapter`: a LoRA state dict (as `AdapterCache.get` returns), a `LoRAWeights`
    from `BatchedGenerator.prepare_adapter`, or None for the bare base. width/height None: the base's native
    resolution."""

    prompt: str
    adapter: Mapping[str, torch.Tensor] | LoRAWeights | None = None
    negative_prompt: str | None = None
    seed: int = 0
    steps: int = 25
    guidance_scale: float = 7.5
    width: int | None = None
    height: int | None = None
    request_id: str | None = None  # echoed in the result; free-form


@dataclass
class GenerationResult:
    request_id: str | None
    image: np.ndarray | None = None  # uint8 (height, width, 3)
    pixels: np.ndarray | None = None  # float32 (height, width, 3) in [0, 1], only with generate(return_float=True)
    error: str | None = None
    batch_size: int = 0  # requests that shared this image's denoising loop (0 when it failed validation)
    seconds: float = 0.0  # wall time of that loop, decode included

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Item:
    pos: int
    req: GenerationRequest
    adapter: LoRAWeights | None
    width: int
    height: int
    negative: str
    guidance: float


@dataclass
class EngineStats:
    batches: int = 0
    images: int = 0
    failed: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class BatchedGenerator:
    """Loads a base pipeline once and serves batches of requests with per-sample adapters.

    base: a loaded `BasePipeline` (shared, e.g. with a trainer) or a diffusers folder for `load_base`.
    scheduler: a diffusers scheduler whose config and class are used (a fresh instance per batch);
      default EulerDiscreteScheduler from the folder's scheduler config.
    max_batch: most requests in one denoising loop (the UNet batch is up to twice that with CFG).
    max_steps, min_size/max_size/size_multiple (default: the VAE factor, 8), max_guidance: request limits.
    vae_batch: latents decoded per VAE call (bounds decode memory at large sizes).
    """

    def __init__(
        self,
        base: BasePipeline | str | Path,
        *,
        device: str | None = None,
        scheduler: Any = None,
        max_batch: int = 16,
        max_steps: int = 150,
        min_size: int | None = None,
        max_size: int = 1024,
        size_multiple: int | None = None,
        max_guidance: float = 30.0,
        vae_batch: int = 8,
    ) -> None:
        self.base = base if isinstance(base, BasePipeline) else load_base(Path(base), device=device)
        unet = self.base.unet
        if getattr(unet.config, "time_cond_proj_dim", None) is not None:
            raise ValueError("guidance-embedding UNets (time_cond_proj_dim, e.g. LCM) are not supported")
        if scheduler is None:
            scheduler = _euler_from_folder(self.base)
        self.scheduler_config = scheduler.config
        self._scheduler_cls = type(scheduler)
        self.max_batch = int(max_batch)
        self.max_steps = int(max_steps)
        self.size_multiple = int(size_multiple or self.base.vae_scale_factor)
        self.min_size = int(min_size or 8 * self.size_multiple)
        self.max_size = int(max_size)
        self.max_guidance = float(max_guidance)
        self.vae_batch = int(vae_batch)
        self.device = self.base.device
        self.dtype = self.base.dtype
        self.stats = EngineStats()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------------
    # Adapters

    def prepare_adapter(self, state_dict: Mapping[str, torch.Tensor], name: str = "") -> LoRAWeights:
        """Validate an adapter against this base and place it on the engine's device (AdapterMismatch if not).

        Preparing once and passing the `LoRAWeights` in requests saves the per-call validation and copies."""
        return prepare_lora(state_dict, self.base.unet, device=self.device, dtype=self.dtype, name=name)

    # ---------------------------------------------------------------------------------------------------
    # Validation

    def _validate(self, pos: int, req: GenerationRequest, prepared: dict[int, Any]) -> _Item | str:
        if not isinstance(req, GenerationRequest):
            return f"not a GenerationRequest: {type(req).__name__}"
        if not isinstance(req.prompt, str):
            return "prompt must be a string"
        if req.negative_prompt is not None and not isinstance(req.negative_prompt, str):
            return "negative_prompt must be a string or None"
        if len(req.prompt) > MAX_PROMPT_CHARS or len(req.negative_prompt or "") > MAX_PROMPT_CHARS:
            return f"prompt longer than {MAX_PROMPT_CHARS} characters"
        if not _is_int(req.seed) or not 0 <= req.seed < 2**63:
            return "seed must be an integer in [0, 2**63)"
        if not _is_int(req.steps) or not 1 <= req.steps <= self.max_steps:
            return f"steps must be an integer in [1, {self.max_steps}]"
        g = req.guidance_scale
        if (
            isinstance(g, bool)
            or not isinstance(g, (int, float))
            or not math.isfinite(g)
            or not 0 <= g <= self.max_guidance
        ):
            return f"guidance_scale must be a number in [0, {self.max_guidance:g}]"
        native = self.base.resolution
        width = native if req.width is None else req.width
        height = native if req.height is None else req.height
        for label, v in (("width", width), ("height", height)):
            if not _is_int(v) or not self.min_size <= v <= self.max_size or v % self.size_multiple:
                return (
                    f"{label} must be a multiple of {self.size_multiple} in [{self.min_size}, {self.max_size}], "
                    f"got {v!r}"
                )
        adapter = None
        if req.adapter is not None:
            key = id(req.adapter)
            if key not in prepared:
                if isinstance(req.adapter, LoRAWeights):
                    prepared[key] = req.adapter
                else:
                    try:
                        prepared[key] = self.prepare_adapter(req.adapter)
                    except AdapterMismatch as exc:
                        prepared[key] = f"adapter rejected: {exc}"
                    except Exception as exc:  # noqa: BLE001 - anything odd inside the adapter fails this request
                        prepared[key] = f"adapter rejected: {type(exc).__name__}: {str(exc)[:200]}"
            adapter = prepared[key]
            if isinstance(adapter, str):
                return adapter
        return _Item(
            pos=pos,
            req=req,
            adapter=adapter,
            width=width,
            height=height,
            negative=req.negative_prompt or "",
            guidance=float(g),
        )

    # ---------------------------------------------------------------------------------------------------
    # Generation

    def generate(self, requests: Sequence[GenerationRequest], *, return_float: bool = False) -> list[GenerationResult]:
        """Images for `requests`, in order; a bad request gets an error result and never affects the others.

        `return_float` also returns each image before quantization (what diffusers' output_type="np" gives),
        for measuring precision."""
        results: list[GenerationResult | None] = [None] * len(requests)
        prepared: dict[int, Any] = {}  # id(adapter object) -> LoRAWeights or error text, for this call
        groups: dict[tuple[int, int, int], list[_Item]] = {}
        for pos, req in enumerate(requests):
            item = self._validate(pos, req, prepared)
            if isinstance(item, str):
                results[pos] = GenerationResult(getattr(req, "request_id", None), error=item)
                continue
            groups.setdefault((item.req.steps, item.width, item.height), []).append(item)
        with self._lock:
            for items in groups.values():
                for start in range(0, len(items), self.max_batch):
                    chunk = items[start : start + self.max_batch]
                    for item, res in zip(chunk, self._run_chunk_safely(chunk, return_float)):
                        results[item.pos] = res
            self.stats.failed += sum(1 for r in results if r is not None and r.error is not None)
        return results  # type: ignore[return-value]  # every position is filled above

    def _run_chunk_safely(self, chunk: list[_Item], return_float: bool = False) -> list[GenerationResult]:
        try:
            return self._run_chunk(chunk, return_float)
        except Exception as exc:  # noqa: BLE001 - isolate the failure to the request that causes it
            if len(chunk) == 1:
                log.warning("generation failed: %s: %s", type(exc).__name__, exc)
                return [
                    GenerationResult(
                        chunk[0].req.request_id, error=f"generation failed: {type(exc).__name__}: {str(exc)[:300]}"
                    )
                ]
            log.warning("batch of %d failed (%s); retrying its requests one at a time", len(chunk), type(exc).__name__)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            out = []
            for item in chunk:
                out.extend(self._run_chunk_safely([item], return_float))
            return out

    @torch.inference_mode()
    def _encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tok = self.base.tokenizer
        te = self.base.text_encoder
        out: dict[str, torch.Tensor] = {}
        for start in range(0, len(texts), 64):
            part = texts[start : start + 64]
            ids = tok(
                part, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            hidden = te(ids.to(self.device))[0].to(self.dtype)
            for i, text in enumerate(part):
                out[text] = hidden[i : i + 1]
        return out

    @torch.inference_mode()
    def _run_chunk(self, chunk: list[_Item], return_float: bool = False) -> list[GenerationResult]:
        t0 = time.perf_counter()
        base = self.base
        device, n = self.device, len(chunk)
        steps, width, height = chunk[0].req.steps, chunk[0].width, chunk[0].height

        guided = [i for i, it in enumerate(chunk) if it.guidance > 1.0]  # diffusers: CFG iff guidance_scale > 1
        texts = list(dict.fromkeys([it.req.prompt for it in chunk] + [chunk[i].negative for i in guided]))
        emb = self._encode_texts(texts)
        cond = torch.cat([emb[it.req.prompt] for it in chunk])
        if guided:
            uncond = torch.cat([emb[chunk[i].negative] for i in guided])
            embeds = torch.cat([uncond, cond])
        else:
            embeds = cond

        # adapters: each distinct one once; row index = that adapter's position, -1 for none
        adapters: list[LoRAWeights] = []
        slot: dict[int, int] = {}
        sample_index = []
        for it in chunk:
            if it.adapter is None:
                sample_index.append(-1)
            else:
                sample_index.append(slot.setdefault(id(it.adapter), len(adapters)))
                if sample_index[-1] == len(adapters):
                    adapters.append(it.adapter)
        row_index = [sample_index[i] for i in guided] + sample_index

        # latents: one CPU generator per sample, drawn like diffusers' randn_tensor for a single request
        scheduler = self._scheduler_cls.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=device)
        shape = (1, base.unet.config.in_channels, height // base.vae_scale_factor, width // base.vae_scale_factor)
        generators = [torch.Generator(device="cpu").manual_seed(int(it.req.seed)) for it in chunk]
        latents = torch.cat([torch.randn(shape, generator=g, dtype=embeds.dtype) for g in generators]).to(device)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = (
            {"generator": generators if n > 1 else generators[0]} if _accepts(scheduler.step, "generator") else {}
        )

        g_idx = torch.tensor(guided, dtype=torch.long, device=device)
        all_guided = len(guided) == n
        if guided:
            # float32 like diffusers' Python-float scale (a bf16 tensor would round e.g. 7.3 to 7.3125)
            g_scale = torch.tensor([chunk[i].guidance for i in guided], dtype=torch.float32, device=device).view(
                -1, 1, 1, 1
            )

        with base.lock, installed(base.unet) as handle:
            with handle.batch(adapters, row_index) if adapters else contextlib.nullcontext():
                for t in scheduler.timesteps:
                    if not guided:
                        model_in = latents
                    elif all_guided:
                        model_in = torch.cat([latents] * 2)
                    else:
                        model_in = torch.cat([latents.index_select(0, g_idx), latents])
                    model_in = scheduler.scale_model_input(model_in, t)
                    pred = base.unet(model_in, t, encoder_hidden_states=embeds, return_dict=False)[0]
                    if not guided:
                        noise = pred
                    else:
                        pred_u, pred_c = pred[: len(guided)], pred[len(guided) :]
                        if all_guided:
                            noise = pred_u + (g_scale * (pred_c - pred_u)).to(pred_u.dtype)
                        else:
                            noise = pred_c.clone()
                            noise[g_idx] = pred_u + (g_scale * (pred_c.index_select(0, g_idx) - pred_u)).to(
                                pred_u.dtype
                            )
                    latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]

        pixels = self._decode(latents)
        images = (pixels * 255).round().astype(np.uint8)  # as diffusers' numpy_to_pil quantizes
        seconds = time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.images += n
        self.stats.batch_sizes.append(n)
        return [
            GenerationResult(
                it.req.request_id,
                image=images[i],
                pixels=pixels[i] if return_float else None,
                batch_size=n,
                seconds=seconds,
            )
            for i, it in enumerate(chunk)
        ]

    @torch.inference_mode()
    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> float32 (N, H, W, 3) in [0, 1], VAE run in chunks of `vae_batch`."""
        vae = self.base.vae
        outs = []
        for start in range(0, latents.shape[0], self.vae_batch):
            z = latents[start : start + self.vae_batch].to(vae.dtype) / vae.config.scaling_factor
            img = vae.decode(z, return_dict=False)[0]
            img = (img / 2 + 0.5).clamp(0, 1)
            outs.append(img.cpu().permute(0, 2, 3, 1).float().numpy())
        return np.concatenate(outs)


def _euler_from_folder(base: BasePipeline) -> Any:
    """EulerDiscreteScheduler from the base folder's scheduler config (all its keys, whatever class saved
    it); from the loaded training scheduler's config when the folder cannot be read."""
    from diffusers import EulerDiscreteScheduler

    try:
        return EulerDiscreteScheduler.from_pretrained(base.folder, subfolder="scheduler", local_files_only=True)
    except Exception:  # noqa: BLE001 - e.g. a BasePipeline assembled in memory
        return EulerDiscreteScheduler.from_config(base.noise_scheduler.config)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


__all__ = ["BatchedGenerator", "EngineStats", "GenerationRequest", "GenerationResult"]
