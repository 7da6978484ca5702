"""Triton Python-backend model `faceharmony_diffusion`: per-user LoRA images, many users in one denoising loop.

Owns the Triton side of per-user inference; the work is done by `faceharmony.core.diffusion`
(`BatchedGenerator`, `AdapterCache`). Contract:

* `initialize(args)`: parses `config.pbtxt` once (its `parameters`: adapter_cache_bytes, engine_max_batch,
  default_steps, default_guidance), reads `Settings.from_env()` (FACEHARMONY_DATA_DIR, FACEHARMONY_BASE_MODEL,
  FACEHARMONY_BLOB_BACKEND, the FACEHARMONY_KEK_* and key-store settings, ... exactly as every other process),
  opens the keyring (core/keys/factory.py install_keyring: the adapters are sealed with their owners' data
  keys), loads the base pipeline once from
  `settings.base_model_dir`, builds the `BatchedGenerator` and an `AdapterCache` over the blob store opened
  with the ORDER role (the only role that may read `models/`), refusing adapters trained on another base;
  the cache holds adapters already prepared for the engine (validated, on its device).
* `execute(requests)`: one Triton (dynamic) batch. Inputs per request, each `[B, 1]` (B is normally 1):
    PROMPT (BYTES, required to generate), NEGATIVE_PROMPT (BYTES, default ""), SEED (INT64, default 0),
    STEPS (INT32), GUIDANCE (FP32) (defaults from the config parameters), WIDTH, HEIGHT (INT32, default: the
    base's native size), ADAPTER_BLOB_ID (BYTES, empty or absent: the bare base), ADAPTER_KEY_ID (BYTES,
    required: the data key id the adapter blob is sealed with, and the image is sealed with), MODEL_VERSION_KEY
    (BYTES, the cache key, e.g. "<model_id>:<version>"; empty: the blob id is the key),
    EVICT_KEYS (BYTES `[1, N]`, optional): cache keys to drop (models pending deletion).
  First every request's EVICT_KEYS are applied (so a generation in the same batch refetches). Then each row's
  adapter is fetched through the cache; all valid rows of all requests go through ONE `engine.generate`
  (the engine gives each sample its own adapter inside one UNet forward). Exactly one response per request,
  in order: IMAGE_SEALED `[B, 1]` BYTES, each row its image sealed (core/diffusion/sealed_image.py: raw RGB
  pixels with their height and width, AES-GCM under the row's ADAPTER_KEY_ID through the keyring, associated
  data `core.keys.aead.triton_image_aad(ADAPTER_BLOB_ID, MODEL_VERSION_KEY, SEED, ADAPTER_KEY_ID)` as sent,
  absent ones ""/0), plus EVICTED `[B, 1]` (how many of the keys were cached) when EVICT_KEYS was given.
  No pixel leaves the model plain: the Python backend passes responses through /dev/shm files and Triton
  sends them on over gRPC (triton_launcher/shm.py), so only sealed bytes may be in them. A request with EVICT_KEYS and no PROMPT only evicts.
  A request that cannot be served (unknown/deleted/corrupt adapter, bad size, steps, guidance, missing
  input; NOT_FOUND also for a shredded data key, UNAVAILABLE when the keys cannot be reached) gets a response
  carrying a `TritonError` with the reason; the other requests are unaffected.
  All rows of one request must have the same size (they share one output tensor); if any row fails, the
  request fails.
* `finalize()`: drops the cache and the engine.

No prompts or image bytes are logged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils

log = logging.getLogger("faceharmony.triton.diffusion")


def _error(message: str, code_name: str = "INVALID_ARG") -> pb_utils.InferenceResponse:
    code = getattr(pb_utils.TritonError, code_name, None)
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


class _RequestError(Exception):
    def __init__(self, message: str, code_name: str = "INVALID_ARG") -> None:
        super().__init__(message)
        self.code_name = code_name


@dataclass
class _Pending:
    """One Triton request on its way through execute()."""

    evict_keys: list[str] = field(default_factory=list)
    evicted: int = 0
    rows: list = field(default_factory=list)  # GenerationRequest per row
    # (blob id, data key id, cache key) per row; blob id "": none
    adapter_refs: list[tuple[str, str, str]] = field(default_factory=list)
    image_aads: list[bytes] = field(default_factory=list)  # per row, what its sealed image is bound to
    error: _RequestError | None = None
    positions: list[int] = field(default_factory=list)  # indices into the flattened engine call


def _text(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    return str(value)


class _Metrics:
    """Named counts as Triton custom metrics, on Triton's metrics port next to its own. `NAMES`: stat ->
    (metric name, description, "COUNTER" or "GAUGE"); `publish(values)` sets the gauges and advances the
    counters to the given totals."""

    NAMES: dict[str, tuple[str, str, str]] = {}

    def __init__(self, model: str) -> None:
        self.families: list[object] = []  # a family must outlive its metrics (Triton's rule)
        self.metrics: dict[str, object] = {}
        self.seen: dict[str, int] = {}
        for stat, (name, description, kind) in self.NAMES.items():
            family = pb_utils.MetricFamily(
                name=name, description=description, kind=getattr(pb_utils.MetricFamily, kind)
            )
            self.families.append(family)
            self.metrics[stat] = family.Metric(labels={"model": model})
            self.seen[stat] = 0

    def publish(self, values: dict[str, int]) -> None:
        for stat, (_name, _description, kind) in self.NAMES.items():
            value = int(values[stat])
            if kind == "COUNTER":
                if value > self.seen[stat]:
                    self.metrics[stat].increment(value - self.seen[stat])
            else:
                self.metrics[stat].set(value)
            self.seen[stat] = value


class _CacheMetrics(_Metrics):
    """The adapter cache's counters (`faceharmony_adapter_cache_*`): hits, fetches from the blob store, evictions
    to stay within the bound, and entries and bytes held. Updated after each execution from the cache's counts."""

    NAMES = {
        "hits": ("faceharmony_adapter_cache_hits_total", "Adapter requests served from the cache", "COUNTER"),
        "misses": ("faceharmony_adapter_cache_fetches_total", "Adapters fetched from the blob store", "COUNTER"),
        "evictions": (
            "faceharmony_adapter_cache_lru_evictions_total",
            "Adapters dropped to stay within the bound",
            "COUNTER",
        ),
        "entries": ("faceharmony_adapter_cache_entries", "Adapters in the cache", "GAUGE"),
        "bytes": ("faceharmony_adapter_cache_bytes", "Bytes of the cached adapters' tensors", "GAUGE"),
    }

    def __init__(self, cache, model: str = "faceharmony_diffusion") -> None:
        self.cache = cache
        super().__init__(model)

    def update(self) -> None:
        self.publish({stat: getattr(self.cache.stats, stat) for stat in self.NAMES})


class TritonPythonModel:
    def initialize(self, args):
        from faceharmony.core.blobstore.base import Role
        from faceharmony.core.blobstore.factory import open_blob_store
        from faceharmony.core.diffusion.adapter_cache import AdapterCache
        from faceharmony.core.diffusion.engine import BatchedGenerator
        from faceharmony.core.keys.factory import install_keyring
        from faceharmony.core.settings import Settings

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        self.max_rows = int(config.get("max_batch_size") or 1)
        self.default_steps = int(params.get("default_steps", "25"))
        self.default_guidance = float(params.get("default_guidance", "7.5"))
        cache_bytes = int(params.get("adapter_cache_bytes", str(256 * 1024 * 1024)))
        engine_max_batch = int(params.get("engine_max_batch", "16"))

        settings = Settings.from_env()
        # KekMissing/KeysUnavailable: the model does not load. Adapters are opened, images sealed with it.
        keyring = self.keyring = install_keyring(settings)
        t0 = time.perf_counter()
        self.engine = BatchedGenerator(settings.base_model_dir, max_batch=engine_max_batch)
        # Cached prepared: each adapter is checked against the base and put on the device once per fetch.
        self.cache = AdapterCache(
            open_blob_store(settings, Role.ORDER, keyring),
            cache_bytes,
            base_fingerprint=self.engine.base.fingerprint,
            prepare=self.engine.prepare_adapter,
        )
        self.executions = 0
        try:
            self._metrics: _CacheMetrics | None = _CacheMetrics(self.cache)
        except Exception as exc:  # noqa: BLE001 - a Triton without custom metrics still serves
            self._metrics = None
            pb_utils.Logger.log_warn(f"adapter cache metrics unavailable: {type(exc).__name__}: {exc}")
        pb_utils.Logger.log_info(
            f"faceharmony_diffusion ready: base {self.engine.base.fingerprint[:12]} on {self.engine.device} "
            f"in {time.perf_counter() - t0:.1f}s; adapter cache {cache_bytes} bytes"
        )

    # ---------------------------------------------------------------------------------------------------

    def _column(self, request, name, rows: int | None, required: bool = False):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            if required:
                raise _RequestError(f"input {name} is required")
            return None
        arr = tensor.as_numpy()
        if rows is not None and arr.shape[0] != rows:
            raise _RequestError(f"input {name} has {arr.shape[0]} rows, PROMPT has {rows}")
        return arr.reshape(arr.shape[0], -1)[:, 0]

    def _parse(self, request, pending: _Pending) -> None:
        from faceharmony.core.diffusion.engine import GenerationRequest
        from faceharmony.core.keys.aead import triton_image_aad

        evict = pb_utils.get_input_tensor_by_name(request, "EVICT_KEYS")
        if evict is not None:
            pending.evict_keys = [_text(k) for k in evict.as_numpy().reshape(-1)]
        prompt_t = pb_utils.get_input_tensor_by_name(request, "PROMPT")
        if prompt_t is None:
            if evict is None:
                raise _RequestError("input PROMPT is required (or EVICT_KEYS for an eviction-only request)")
            return
        prompts = prompt_t.as_numpy()
        n = prompts.shape[0]
        prompts = prompts.reshape(n, -1)[:, 0]
        negative = self._column(request, "NEGATIVE_PROMPT", n)
        blob_ids = self._column(request, "ADAPTER_BLOB_ID", n)
        key_ids = self._column(request, "ADAPTER_KEY_ID", n)
        keys = self._column(request, "MODEL_VERSION_KEY", n)
        seeds = self._column(request, "SEED", n)
        steps = self._column(request, "STEPS", n)
        guidance = self._column(request, "GUIDANCE", n)
        widths = self._column(request, "WIDTH", n)
        heights = self._column(request, "HEIGHT", n)
        for i in range(n):
            try:
                req = GenerationRequest(
                    prompt=_text(prompts[i]),
                    negative_prompt=_text(negative[i]) if negative is not None else None,
                    seed=int(seeds[i]) if seeds is not None else 0,
                    steps=int(steps[i]) if steps is not None else self.default_steps,
                    guidance_scale=float(guidance[i]) if guidance is not None else self.default_guidance,
                    width=int(widths[i]) if widths is not None else None,
                    height=int(heights[i]) if heights is not None else None,
                )
            except UnicodeDecodeError:
                raise _RequestError("text inputs must be UTF-8") from None
            blob_id = _text(blob_ids[i]) if blob_ids is not None else ""
            key_id = _text(key_ids[i]) if key_ids is not None else ""
            if not key_id:
                raise _RequestError(
                    "input ADAPTER_KEY_ID is required (the adapter is opened, the image sealed with it)"
                )
            sent_key = _text(keys[i]) if keys is not None else ""
            pending.rows.append(req)
            pending.adapter_refs.append((blob_id, key_id, sent_key or blob_id))  # resolved in _fetch_adapters
            pending.image_aads.append(triton_image_aad(blob_id, sent_key, req.seed, key_id))
        sizes = {(r.width, r.height) for r in pending.rows}
        if len(sizes) > 1:
            raise _RequestError("all rows of one request must have the same WIDTH and HEIGHT")

    def _fetch_adapters(self, pending: _Pending) -> None:
        from faceharmony.core.blobstore.base import BlobError
        from faceharmony.core.diffusion.adapter_cache import AdapterError, AdapterNotFound
        from faceharmony.core.keys.errors import KeysUnavailable

        for req, (blob_id, key_id, key) in zip(pending.rows, pending.adapter_refs):
            if not blob_id:
                continue
            try:
                req.adapter = self.cache.get(key, blob_id, key_id)
            except AdapterNotFound as exc:
                raise _RequestError(str(exc), "NOT_FOUND") from None
            except AdapterError as exc:
                raise _RequestError(f"adapter {blob_id} cannot be used: {exc}") from None
            except BlobError as exc:
                raise _RequestError(f"blob store unavailable: {type(exc).__name__}", "UNAVAILABLE") from None
            except KeysUnavailable as exc:
                raise _RequestError(f"keys unavailable: {exc.reason}", "UNAVAILABLE") from None
            except ValueError as exc:  # e.g. a malformed blob or key id refused by the store
                raise _RequestError(f"bad ADAPTER_BLOB_ID or ADAPTER_KEY_ID: {exc}") from None

    def _sealed_images(self, pending: _Pending, images) -> np.ndarray:
        """[B, 1] BYTES: each row's image sealed with its ADAPTER_KEY_ID (the only form an image leaves in)."""
        from faceharmony.core.diffusion.sealed_image import seal_image
        from faceharmony.core.keys.errors import KeyShredded, KeysUnavailable

        sealed = np.empty((len(images), 1), dtype=np.object_)  # object: bytes keep their trailing zeros
        for i, (image, (_blob, key_id, _key), aad) in enumerate(zip(images, pending.adapter_refs, pending.image_aads)):
            try:
                sealed[i, 0] = seal_image(self.keyring, key_id, image, aad)
            except KeyShredded:
                raise _RequestError(f"data key {key_id} not found (shredded)", "NOT_FOUND") from None
            except KeysUnavailable as exc:
                raise _RequestError(f"keys unavailable: {exc.reason}", "UNAVAILABLE") from None
            except ValueError as exc:  # e.g. a malformed key id refused by the key store
                raise _RequestError(f"bad ADAPTER_KEY_ID: {exc}") from None
        return sealed

    def execute(self, requests):
        pendings = [_Pending() for _ in requests]
        for request, pending in zip(requests, pendings):
            try:
                self._parse(request, pending)
                if len(pending.rows) > self.max_rows:
                    raise _RequestError(f"at most {self.max_rows} rows per request")
            except _RequestError as exc:
                pending.error = exc
            except Exception as exc:  # noqa: BLE001 - one odd request must not fail the batch
                pending.error = _RequestError(f"bad request: {type(exc).__name__}: {str(exc)[:200]}")

        # Evictions first, so a generation in the same batch reads the adapter afresh.
        for pending in pendings:
            for key in pending.evict_keys:
                pending.evicted += int(self.cache.evict(key))

        flat = []
        for pending in pendings:
            if pending.error is not None or not pending.rows:
                continue
            try:
                self._fetch_adapters(pending)
            except _RequestError as exc:
                pending.error = exc
                continue
            except Exception as exc:  # noqa: BLE001
                pending.error = _RequestError(f"adapter fetch failed: {type(exc).__name__}", "INTERNAL")
                continue
            pending.positions = list(range(len(flat), len(flat) + len(pending.rows)))
            flat.extend(pending.rows)

        results = self.engine.generate(flat) if flat else []
        self.executions += 1

        responses = []
        for pending in pendings:
            if pending.error is not None:
                responses.append(_error(str(pending.error), pending.error.code_name))
                continue
            outputs = []
            if pending.rows:
                mine = [results[p] for p in pending.positions]
                failed = [(i, r.error) for i, r in enumerate(mine) if not r.ok]
                if failed:
                    i, msg = failed[0]
                    prefix = f"row {i}: " if len(mine) > 1 else ""
                    responses.append(_error(prefix + msg))
                    continue
                try:
                    sealed = self._sealed_images(pending, [r.image for r in mine])
                except _RequestError as exc:
                    responses.append(_error(str(exc), exc.code_name))
                    continue
                except Exception as exc:  # noqa: BLE001 - one request's keys must not fail the batch
                    responses.append(_error(f"image sealing failed: {type(exc).__name__}", "INTERNAL"))
                    continue
                outputs.append(pb_utils.Tensor("IMAGE_SEALED", sealed))
            if pending.evict_keys:
                rows = max(1, len(pending.rows))
                outputs.append(pb_utils.Tensor("EVICTED", np.full((rows, 1), pending.evicted, dtype=np.int32)))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        try:
            if self._metrics is not None:
                self._metrics.update()
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a batch that was served
            pb_utils.Logger.log_warn(f"adapter cache metrics not updated: {type(exc).__name__}")
        return responses

    def finalize(self):
        cache = getattr(self, "cache", None)
        if cache is not None:
            cache.clear()
        self.cache = None
        self.engine = None
        pb_utils.Logger.log_info("faceharmony_diffusion finalized")
