"""Per-step continuous batching: a new image joins the running denoising loop at the next step, with its own LoRA.

`BatchedGenerator.generate` runs a fixed batch from its first step to its last, so a request that arrives one
step after a loop started waits for the whole loop. `ContinuousBatcher` schedules at the granularity LLM servers
use (Orca's iteration-level scheduling, vLLM's continuous batching), applied to diffusion:

* A running batch per image size holds samples, each with its own adapter, seed, prompt embeddings, guidance,
  step count and its own scheduler instance (so its own position in its own sigma schedule).
* At every step boundary waiting requests are admitted, in arrival order, while the batch bound
  (`max_batch` samples per running batch) and the memory budget (`max_pixels`: the sum over running samples of
  UNet rows x width x height; a guided sample has two rows) allow; the head of the queue that does not fit waits,
  and nothing behind it jumps ahead (what waits is served in order).
* One UNet forward per running batch and step, with per-row timesteps and per-row adapters (multi_lora); then
  each sample's scheduler step with its own sigmas and its own generator (ancestral samplers draw from it).
* Finished samples retire at once: their latents are decoded together (VAE batches of `vae_batch`) and each
  request's `done` callback gets its result.

Exactness: a sample's computation depends on nothing but its own request (every operation of a step is per row),
so an image is the same alone, in a fixed batch (`BatchedGenerator.generate`) or joining a running batch mid-way,
up to the floating-point differences of batched kernels (tests/test_continuous_batching.py measures it against
diffusers' own `load_lora_weights` path, with the engine's tolerance). This holds for any diffusers scheduler
whose `step` works on one sample with its own instance: tested with Euler (the default), Euler ancestral and
DPM-Solver++ (multistep keeps its history per instance, so per sample).

Errors stay per request: validation at `submit` (the engine's own checks, plus the budget: a request that can
never fit fails at once); a step that raises is retried sample by sample, and the samples that fail alone get an
error result while the rest go on. Cancellation: `submit(..., cancelled=predicate)` is asked at every step
boundary; a cancelled request leaves the batch (or the queue) and gets a result with `error = CANCELLED`.

Threading: `submit` is thread-safe; `start()` runs the loop on a thread of its own (idle when nothing waits),
`stop()` ends it and fails whatever is left with `STOPPED`. Tests drive `step()` directly, which is
deterministic: one call is one step boundary.
"""

from __future__ import annotations

import collections
import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from faceharmony.core.diffusion.engine import BatchedGenerator, GenerationRequest, GenerationResult, _accepts, _Item
from faceharmony.core.diffusion.multi_lora import LoRAWeights, install_multi_lora, uninstall_multi_lora

log = logging.getLogger(__name__)

CANCELLED = "CANCELLED: the request was cancelled"
STOPPED = "STOPPED: the engine stopped before the request finished"


@dataclass
class _Sample:
    item: _Item
    done: Callable[[GenerationResult], None]
    cancelled: Callable[[], bool] | None
    submitted: float
    scheduler: Any = None
    generator: torch.Generator | None = None
    latents: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    uncond: torch.Tensor | None = None  # only for guided samples (guidance > 1, as diffusers decides)
    k: int = 0  # steps done
    admitted: float = 0.0
    peak_batch: int = 0  # most samples that shared a step with this one

    @property
    def guided(self) -> bool:
        return self.item.guidance > 1.0

    @property
    def rows(self) -> int:
        return 2 if self.guided else 1

    @property
    def pixels(self) -> int:
        return self.rows * self.item.width * self.item.height

    @property
    def size(self) -> tuple[int, int]:
        return (self.item.width, self.item.height)

    @property
    def finished(self) -> bool:
        return self.k >= self.item.req.steps


@dataclass
class BatcherStats:
    steps: int = 0  # UNet forwards
    images: int = 0
    failed: int = 0
    cancelled: int = 0
    joined_running: int = 0  # requests admitted while other samples of their size were mid-loop
    batch_sizes: list[int] = field(default_factory=list)  # samples per forward


class ContinuousBatcher:
    """Iteration-level scheduling over a `BatchedGenerator`'s base, validation, text encoder and VAE.

    max_batch: most samples in one running batch (one size); default the engine's `max_batch`.
    max_pixels: the memory budget, sum of rows x width x height over every running sample (all sizes);
      default `max_batch` guided samples at the base's native resolution.
    max_waiting: most requests queued (a submit beyond it fails at once with QUEUE_FULL).
    return_float: results also carry the image before quantization (for measuring precision).
    """

    def __init__(
        self,
        engine: BatchedGenerator,
        *,
        max_batch: int | None = None,
        max_pixels: int | None = None,
        max_waiting: int = 1024,
        return_float: bool = False,
    ) -> None:
        self.engine = engine
        self.return_float = return_float
        self.max_batch = int(max_batch or engine.max_batch)
        native = engine.base.resolution
        self.max_pixels = int(max_pixels or self.max_batch * 2 * native * native)
        self.max_waiting = int(max_waiting)
        self.stats = BatcherStats()
        self._waiting: collections.deque[_Sample] = collections.deque()
        self._running: dict[tuple[int, int], list[_Sample]] = {}
        self._cv = threading.Condition()
        self._step_lock = threading.Lock()  # one step at a time (start()'s thread, or a test's step())
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._templates: dict[int, Any] = {}  # steps -> a scheduler with its timesteps set, copied per sample
        self._set_key: tuple | None = None  # the adapter composition set on the UNet (None: unknown)
        self._set_adapters: list[LoRAWeights] = []  # keeps those adapters alive, so their ids stay theirs
        self._wrapped = False

    # ------------------------------------------------------------------------------------------------
    # Submitting

    def submit(
        self,
        request: GenerationRequest,
        done: Callable[[GenerationResult], None],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> bool:
        """Queue one request; `done(result)` is called once, from the loop's thread (or here, for a request
        refused at once). Returns False when it was refused at once (its result already delivered)."""
        item = self.engine._validate(0, request, {})
        error = item if isinstance(item, str) else None
        if error is None:
            assert not isinstance(item, str)
            sample = _Sample(item, done, cancelled, time.perf_counter())
            if sample.pixels > self.max_pixels:
                error = (
                    f"BUDGET: {sample.item.width}x{sample.item.height} with {sample.rows} UNet rows exceeds the "
                    f"engine's memory budget of {self.max_pixels} pixels"
                )
        if error is None:
            with self._cv:
                if self._stopping:
                    error = STOPPED
                elif len(self._waiting) >= self.max_waiting:
                    error = f"QUEUE_FULL: {self.max_waiting} requests are already waiting"
                else:
                    self._waiting.append(sample)
                    self._cv.notify_all()
                    return True
        self.stats.failed += 1
        done(GenerationResult(getattr(request, "request_id", None), error=error))
        return False

    def counts(self) -> tuple[int, int]:
        """(samples running, requests waiting)."""
        with self._cv:
            return sum(len(b) for b in self._running.values()), len(self._waiting)

    def pending(self) -> int:
        """Requests waiting or running."""
        with self._cv:
            return len(self._waiting) + sum(len(b) for b in self._running.values())

    # ------------------------------------------------------------------------------------------------
    # The loop

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="continuous-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop; requests still waiting or running get a STOPPED result."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._step_lock:
            with self._cv:
                left = list(self._waiting) + [s for b in self._running.values() for s in b]
                self._waiting.clear()
                self._running.clear()
            for sample in left:
                self._finish(sample, error=STOPPED)
            if self._wrapped:
                self._release()

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._running:
                    self._cv.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:
                log.exception("continuous batcher step failed")
                time.sleep(0.1)

    def step(self) -> int:
        """One step boundary: drop cancelled requests, admit what fits, one UNet forward per running batch,
        retire what finished. Returns the number of samples that took a step."""
        with self._step_lock:
            self._drop_cancelled()
            admitted = self._admit()
            if admitted:
                self._prepare(admitted)
            stepped = 0
            groups = [list(b) for b in self._running.values() if b]
            if groups:
                with self.engine.base.lock:
                    # The projections stay wrapped while there is work (installing them every step would cost
                    # more than the step at small sizes); they are put back as soon as the batcher is idle.
                    handle = install_multi_lora(self.engine.base.unet)
                    self._wrapped = True
                    for samples in groups:
                        stepped += self._step_group(handle, samples)
            self._retire()
            if self._wrapped and not self.pending():
                self._release()
            return stepped

    def _release(self) -> None:
        """Clear the adapters and unwrap the UNet (the batcher is idle, or stopping)."""
        with self.engine.base.lock:
            uninstall_multi_lora(self.engine.base.unet)
            self._set_key, self._set_adapters, self._wrapped = None, [], False

    # ------------------------------------------------------------------------------------------------
    # Admission

    def _running_pixels(self) -> int:
        return sum(s.pixels for b in self._running.values() for s in b)

    def _admit(self) -> list[_Sample]:
        admitted: list[_Sample] = []
        with self._cv:
            used = self._running_pixels()
            while self._waiting:
                head = self._waiting[0]
                batch = self._running.setdefault(head.size, [])
                if len(batch) >= self.max_batch or used + head.pixels > self.max_pixels:
                    break  # the head waits, and everything behind it (arrival order)
                self._waiting.popleft()
                if batch and any(s.k > 0 for s in batch):
                    self.stats.joined_running += 1
                batch.append(head)
                used += head.pixels
                admitted.append(head)
            for size in [k for k, b in self._running.items() if not b]:
                del self._running[size]
        return admitted

    @torch.inference_mode()
    def _prepare(self, samples: list[_Sample]) -> None:
        """Text embeddings (one encoder batch for every distinct string), latents, per-sample schedulers."""
        engine = self.engine
        texts = list(
            dict.fromkeys([s.item.req.prompt for s in samples] + [s.item.negative for s in samples if s.guided])
        )
        try:
            emb = engine._encode_texts(texts)
        except Exception as exc:  # noqa: BLE001 - fail these requests, not the loop
            for s in samples:
                self._remove(s)
                self._finish(s, error=f"generation failed: {type(exc).__name__}: {str(exc)[:300]}")
            return
        base = engine.base
        now = time.perf_counter()
        for s in samples:
            s.cond = emb[s.item.req.prompt]
            s.uncond = emb[s.item.negative] if s.guided else None
            s.scheduler = self._scheduler_for(s.item.req.steps)
            shape = (
                1,
                base.unet.config.in_channels,
                s.item.height // base.vae_scale_factor,
                s.item.width // base.vae_scale_factor,
            )
            # One CPU generator per sample, drawn as diffusers' randn_tensor draws for a single request.
            s.generator = torch.Generator(device="cpu").manual_seed(int(s.item.req.seed))
            latents = torch.randn(shape, generator=s.generator, dtype=s.cond.dtype).to(engine.device)
            s.latents = latents * s.scheduler.init_noise_sigma
            s.admitted = now

    def _scheduler_for(self, steps: int) -> Any:
        template = self._templates.get(steps)
        if template is None:
            template = self.engine._scheduler_cls.from_config(self.engine.scheduler_config)
            template.set_timesteps(steps, device=self.engine.device)
            self._templates[steps] = template
        return copy.deepcopy(template)

    # ------------------------------------------------------------------------------------------------
    # One step of one running batch

    def _step_group(self, handle, samples: list[_Sample]) -> int:
        try:
            self._forward(handle, samples)
            for s in samples:
                s.peak_batch = max(s.peak_batch, len(samples))
            self.stats.batch_sizes.append(len(samples))
            self.stats.steps += 1
            return len(samples)
        except Exception as exc:  # noqa: BLE001 - isolate the failure to the samples that cause it
            if len(samples) == 1:
                log.warning("generation step failed: %s: %s", type(exc).__name__, exc)
                self._remove(samples[0])
                self._finish(samples[0], error=f"generation failed: {type(exc).__name__}: {str(exc)[:300]}")
                return 0
            log.warning("step of %d samples failed (%s); retrying them one at a time", len(samples), type(exc).__name__)
            if self.engine.device.type == "cuda":
                torch.cuda.empty_cache()
            return sum(self._step_group(handle, [s]) for s in samples)

    @torch.inference_mode()
    def _forward(self, handle, samples: list[_Sample]) -> None:
        """One UNet forward for `samples` (one size), then each sample's own scheduler step. Nothing of a
        sample changes unless the whole forward succeeded (latents and steps are updated at the end)."""
        device = self.engine.device
        guided = [s for s in samples if s.guided]
        rows = guided + samples  # [uncond rows of the guided samples..., cond rows of every sample]
        timesteps = [s.scheduler.timesteps[s.k] for s in samples]
        scaled = [s.scheduler.scale_model_input(s.latents, t) for s, t in zip(samples, timesteps)]
        position = {id(s): i for i, s in enumerate(samples)}
        model_in = torch.cat([scaled[position[id(s)]] for s in guided] + scaled)
        t_rows = torch.stack([timesteps[position[id(s)]] for s in rows]).to(device)
        embeds = torch.cat([s.uncond for s in guided] + [s.cond for s in samples])

        adapters: list[LoRAWeights] = []
        slot: dict[int, int] = {}
        sample_index = []
        for s in samples:
            if s.item.adapter is None:
                sample_index.append(-1)
            else:
                i = slot.setdefault(id(s.item.adapter), len(adapters))
                if i == len(adapters):
                    adapters.append(s.item.adapter)
                sample_index.append(i)
        row_index = [sample_index[position[id(s)]] for s in guided] + sample_index
        # The adapters' stacks are rebuilt only when the batch's composition changed since the last forward.
        key = (tuple(id(a) for a in adapters), tuple(row_index))
        if key != self._set_key:
            self._set_key = None
            if adapters:
                handle.set_batch(adapters, row_index)
            else:
                handle.clear()
            self._set_key, self._set_adapters = key, adapters
        try:
            pred = self.engine.base.unet(model_in, t_rows, encoder_hidden_states=embeds, return_dict=False)[0]
        except BaseException:
            handle.clear()
            self._set_key = None
            raise

        n_guided = len(guided)
        cond_pred = pred[n_guided:]
        new_latents = []
        for i, s in enumerate(samples):
            noise = cond_pred[i : i + 1]
            if s.guided:
                j = guided.index(s)
                uncond = pred[j : j + 1]
                # float32 like diffusers' Python-float scale, then back to the UNet's dtype (as the engine does)
                scale = torch.tensor(s.item.guidance, dtype=torch.float32, device=device)
                noise = uncond + (scale * (noise - uncond)).to(uncond.dtype)
            kwargs = {"generator": s.generator} if _accepts(s.scheduler.step, "generator") else {}
            new_latents.append(s.scheduler.step(noise, timesteps[i], s.latents, **kwargs, return_dict=False)[0])
        for s, latents in zip(samples, new_latents):
            s.latents = latents
            s.k += 1

    # ------------------------------------------------------------------------------------------------
    # Retiring, cancelling

    def _remove(self, sample: _Sample) -> None:
        with self._cv:
            batch = self._running.get(sample.size, [])
            if sample in batch:
                batch.remove(sample)
            elif sample in self._waiting:
                self._waiting.remove(sample)

    def _drop_cancelled(self) -> None:
        with self._cv:
            every = list(self._waiting) + [s for b in self._running.values() for s in b]
        for s in every:
            try:
                gone = bool(s.cancelled and s.cancelled())
            except Exception:  # noqa: BLE001 - a predicate that fails counts as cancelled
                gone = True
            if gone:
                self._remove(s)
                self.stats.cancelled += 1
                self._finish(s, error=CANCELLED)

    def _retire(self) -> None:
        with self._cv:
            finished = [s for b in self._running.values() for s in b if s.finished]
            for s in finished:
                self._running[s.size].remove(s)
        if not finished:
            return
        by_size: dict[tuple[int, int], list[_Sample]] = {}
        for s in finished:
            by_size.setdefault(s.size, []).append(s)
        for group in by_size.values():
            self._decode_and_finish(group)

    def _decode_and_finish(self, group: list[_Sample]) -> None:
        try:
            pixels = self.engine._decode(torch.cat([s.latents for s in group]))
        except Exception as exc:  # noqa: BLE001 - decode alone to find the one that fails
            if len(group) == 1:
                self._finish(group[0], error=f"decode failed: {type(exc).__name__}: {str(exc)[:300]}")
                return
            for s in group:
                self._decode_and_finish([s])
            return
        images = (pixels * 255).round().astype("uint8")
        for i, s in enumerate(group):
            self._finish(s, image=images[i], pixels=pixels[i] if self.return_float else None)

    def _finish(self, sample: _Sample, *, image=None, pixels=None, error: str | None = None) -> None:
        if error is None:
            self.stats.images += 1
        elif error != CANCELLED:
            self.stats.failed += 1
        result = GenerationResult(
            sample.item.req.request_id,
            image=image,
            pixels=pixels,
            error=error,
            batch_size=sample.peak_batch,
            seconds=time.perf_counter() - (sample.admitted or sample.submitted),
        )
        try:
            sample.done(result)
        except Exception:
            log.exception("result callback failed")
