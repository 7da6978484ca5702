"""The per-user inference engine: mixed-adapter batches equal single requests run the ordinary diffusers way,
ranks are padded exactly, a bad request fails alone, the UNet is restored exactly, and the adapter cache
(LRU by bytes, hits, corrupt bytes, eviction and reload, one fetch per key under concurrency).

A tiny random-weight base pipeline is built once per module and three tiny adapters of ranks 4, 8 and 2 are
trained on it with a few high-learning-rate steps, so they differ visibly (their effect on an image is tens
of grey levels, far above the tolerance). The whole file takes well under two minutes on a 2-core CPU.

Tolerance of the correctness test (mixed batch vs diffusers per request, same seeds): float output within
1e-3 of diffusers' output_type="np" image (measured: about 1e-6) and the uint8 image within 1 grey level of
diffusers' output quantized the same way (measured: at most 1, on a few pixels sitting on a rounding edge).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.diffusion.adapter_cache import AdapterCache, AdapterMismatchedBase, AdapterNotFound, tensor_bytes
from faceharmony.core.diffusion.adapter_format import AdapterCorrupt, parse_adapter_bytes
from faceharmony.core.diffusion.engine import BatchedGenerator, GenerationRequest
from faceharmony.core.diffusion.multi_lora import (
    LoRAWeights,
    MultiLoRALinear,
    install_multi_lora,
    prepare_lora,
    target_layers,
    uninstall_multi_lora,
)
from faceharmony.core.diffusion.pipeline import build_tiny_pipeline, load_base
from faceharmony.trainer.lora import TrainingSettings, load_adapter_bytes, train_lora
from tests.support import images
from tests.support.keyrings import make_keyring

pytestmark = pytest.mark.torch  # LoRA training and generation with torch on the CPU

STEPS = 8
FLOAT_TOL = 1e-3  # max abs difference of [0, 1] float images
UINT8_TOL = 1  # grey levels


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-base")
    build_tiny_pipeline(path, seed=0)
    return path


@pytest.fixture(scope="module")
def base(folder):
    return load_base(folder, device="cpu")


@pytest.fixture(scope="module")
def engine(base):
    return BatchedGenerator(base)


@pytest.fixture(scope="module")
def adapter_bytes(base) -> list[bytes]:
    """Three adapters (ranks 4, 8, 2), each trained for a few steps on a different photo."""
    photos = [images.encode(images.astronaut().crop((100, 0, 400, 300)), quality=90), images.cat(), images.no_face()]
    out = []
    for i, (rank, photo) in enumerate(zip((4, 8, 2), photos)):
        settings = TrainingSettings(rank=rank, steps=12, batch_size=2, learning_rate=2e-2, seed=100 + i, flip=False)
        out.append(train_lora(base, [photo], settings).safetensors)
    return out


@pytest.fixture(scope="module")
def adapters(adapter_bytes) -> list[dict[str, torch.Tensor]]:
    return [load_adapter_bytes(b) for b in adapter_bytes]


@pytest.fixture(scope="module")
def reference_pipe(folder):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers_image(pipe, req: GenerationRequest, adapter_data: bytes | None) -> np.ndarray:
    """One request the ordinary diffusers way: load_lora_weights from a file, run, unload."""
    if adapter_data is not None:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "adapter.safetensors").write_bytes(adapter_data)
            pipe.load_lora_weights(tmp, weight_name="adapter.safetensors", adapter_name="user")
    try:
        out = pipe(
            req.prompt,
            negative_prompt=req.negative_prompt,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            height=req.height or 256,
            width=req.width or 256,
            generator=torch.Generator("cpu").manual_seed(req.seed),
            output_type="np",
        )
    finally:
        if adapter_data is not None:
            pipe.unload_lora_weights()
    return out.images[0]


# ---------------------------------------------------------------------------------------------------------
# The correctness test


def test_mixed_batch_equals_each_request_alone_in_diffusers(engine, adapters, adapter_bytes, reference_pipe):
    a1, a2, a3 = adapters
    requests = [
        GenerationRequest("a photo of sks person", a1, seed=11, steps=STEPS, guidance_scale=7.5),
        GenerationRequest(
            "a portrait of a woman", a2, negative_prompt="blurry", seed=22, steps=STEPS, guidance_scale=5.0
        ),
        GenerationRequest("a photo of a cat", a3, seed=33, steps=STEPS, guidance_scale=1.0),  # no CFG, as in diffusers
        GenerationRequest(
            "a photo of a dog", None, negative_prompt="low quality", seed=44, steps=STEPS, guidance_scale=3.0
        ),
        GenerationRequest("a photo of sks person", a1, seed=55, steps=STEPS, guidance_scale=7.5),
    ]
    sources = [adapter_bytes[0], adapter_bytes[1], adapter_bytes[2], None, adapter_bytes[0]]
    t0 = time.perf_counter()
    results = engine.generate(requests, return_float=True)
    batch_s = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(r.batch_size == 5 for r in results)  # one denoising loop for all five

    float_diffs, uint8_diffs = [], []
    for req, src, res in zip(requests, sources, results):
        ref = _diffusers_image(reference_pipe, req, src)
        assert res.image.shape == ref.shape == (256, 256, 3) and res.image.dtype == np.uint8
        float_diffs.append(float(np.abs(res.pixels - ref).max()))
        uint8_diffs.append(int(np.abs(res.image.astype(int) - np.round(ref * 255).astype(int)).max()))
    print(
        f"\nmixed batch of 5 in {batch_s:.2f}s; max |float diff| per request {[f'{d:.1e}' for d in float_diffs]}; "
        f"max uint8 diff {uint8_diffs}"
    )
    assert max(float_diffs) <= FLOAT_TOL
    assert max(uint8_diffs) <= UINT8_TOL

    # The comparison means something: each adapter moves the image far more than the tolerance, and the
    # same adapter with another seed gives another image.
    plain = engine.generate(
        [GenerationRequest(r.prompt, None, r.negative_prompt, r.seed, r.steps, r.guidance_scale) for r in requests[:3]]
    )
    for res, alone in zip(results[:3], plain):
        assert np.abs(res.image.astype(int) - alone.image.astype(int)).mean() > 2
    assert np.abs(results[0].image.astype(int) - results[4].image.astype(int)).mean() > 2


def test_deterministic_for_a_seed(engine, adapters):
    requests = [
        GenerationRequest("a photo of sks person", adapters[0], seed=5, steps=4),
        GenerationRequest("a photo of a man", adapters[1], seed=6, steps=4),
    ]
    first = engine.generate(requests)
    second = engine.generate(requests)
    for a, b in zip(first, second):
        assert np.array_equal(a.image, b.image)
    alone = engine.generate([requests[1]])[0]
    assert np.abs(alone.image.astype(int) - first[1].image.astype(int)).max() <= UINT8_TOL


# ---------------------------------------------------------------------------------------------------------
# Ranks, CFG rows, the layer itself


def test_different_ranks_in_one_batch_are_exact():
    """Padding to the largest rank adds exact zeros: each row equals its own unpadded LoRA product."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40).double()
    ranks = {"a": 2, "b": 8, "c": 5}
    loras = {
        k: (torch.randn(r, 24, dtype=torch.float64), torch.randn(40, r, dtype=torch.float64)) for k, r in ranks.items()
    }

    class Unet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.Module()
            self.attn.to_q = lin

    unet = Unet()
    handle = install_multi_lora(unet)
    weights = [
        prepare_lora({"unet.attn.to_q.lora.down.weight": d, "unet.attn.to_q.lora.up.weight": u}, unet)
        for d, u in loras.values()
    ]
    names = list(loras)
    index = [0, 1, -1, 2, 1, 0]  # rows: a, b, none, c, b, a
    x = torch.randn(len(index), 7, 24, dtype=torch.float64)
    with handle.batch(weights, index):
        assert unet.attn.to_q.mode == "mixed"
        y = unet.attn.to_q(x)
    base = lin(x)
    for row, i in enumerate(index):
        if i < 0:
            assert torch.equal(y[row], base[row])  # no adapter: exactly the base output
            continue
        d, u = loras[names[i]]
        expected = base[row] + (x[row] @ d.T) @ u.T
        assert torch.allclose(y[row], expected, rtol=0, atol=1e-12)
    # one adapter for every row takes the broadcast path and agrees with the bmm path
    with handle.batch(weights[1:2], [0] * len(index)):
        assert unet.attn.to_q.mode == "shared"
        shared = unet.attn.to_q(x)
    d, u = loras["b"]
    assert torch.allclose(shared, base + (x @ d.T) @ u.T, rtol=0, atol=1e-12)
    assert unet.attn.to_q.mode == "none"  # cleared on exit
    assert uninstall_multi_lora(unet) and unet.attn.to_q is lin


def test_mixed_ranks_engine_matches_alone(engine, adapters):
    """Ranks 2, 8 and 4 in one batch with a plain request: each image equals the request run alone."""
    reqs = [
        GenerationRequest("a photo of a cat", adapters[2], seed=1, steps=4),  # rank 2
        GenerationRequest("a photo of a cat", adapters[1], seed=1, steps=4),  # rank 8
        GenerationRequest("a photo of a cat", None, seed=1, steps=4),
        GenerationRequest("a photo of a cat", adapters[0], seed=1, steps=4),  # rank 4
    ]
    batch = engine.generate(reqs, return_float=True)
    for req, res in zip(reqs, batch):
        alone = engine.generate([req], return_float=True)[0]
        assert np.abs(alone.pixels - res.pixels).max() <= FLOAT_TOL
    assert len({r.image.tobytes() for r in batch}) == 4  # same seed and prompt, four different models


# ---------------------------------------------------------------------------------------------------------
# Errors stay per request


def test_bad_requests_fail_alone(engine, adapters):
    a1 = adapters[0]
    wrong_shape = dict(a1)
    key = next(k for k in wrong_shape if k.endswith("lora.down.weight"))
    wrong_shape[key] = torch.zeros(4, 3)
    non_finite = {k: (v * float("nan") if "up" in k else v) for k, v in a1.items()}
    unknown_layer = {
        **a1,
        "unet.nowhere.to_q.lora.down.weight": torch.zeros(4, 32),
        "unet.nowhere.to_q.lora.up.weight": torch.zeros(32, 4),
    }
    good1 = GenerationRequest("a photo of sks person", a1, seed=3, steps=4, request_id="good1")
    good2 = GenerationRequest("a photo of a dog", None, seed=4, steps=4, request_id="good2")
    requests = [
        good1,
        GenerationRequest("x", None, steps=4, width=100, request_id="size-not-multiple"),
        GenerationRequest("x", None, steps=4, height=4096, request_id="size-too-large"),
        GenerationRequest("x", None, steps=0, request_id="steps-zero"),
        GenerationRequest("x", None, steps=10_000, request_id="steps-too-many"),
        GenerationRequest("x", None, steps=4, guidance_scale=float("nan"), request_id="guidance-nan"),
        GenerationRequest("x", None, steps=4, seed=-1, request_id="seed-negative"),
        GenerationRequest("x", wrong_shape, steps=4, request_id="adapter-shape"),
        GenerationRequest("x", non_finite, steps=4, request_id="adapter-nan"),
        GenerationRequest("x", unknown_layer, steps=4, request_id="adapter-layer"),
        GenerationRequest("x", {"garbage": torch.zeros(1)}, steps=4, request_id="adapter-keys"),
        GenerationRequest(None, None, steps=4, request_id="prompt-none"),  # type: ignore[arg-type]
        good2,
    ]
    results = engine.generate(requests)
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    by_id = {r.request_id: r for r in results}
    assert by_id["good1"].ok and by_id["good2"].ok
    assert by_id["good1"].batch_size == 2  # the bad ones never entered the batch
    for r in results:
        if r.request_id.startswith("good"):
            continue
        assert not r.ok and r.image is None and r.error, r.request_id
    assert "multiple of 8" in by_id["size-not-multiple"].error
    assert "steps" in by_id["steps-zero"].error
    assert "adapter" in by_id["adapter-shape"].error and "non-finite" in by_id["adapter-nan"].error
    # the good ones are exactly what the same two requests give without the bad ones
    clean = engine.generate([good1, good2])
    assert np.array_equal(clean[0].image, by_id["good1"].image)
    assert np.array_equal(clean[1].image, by_id["good2"].image)


def test_runtime_failure_in_a_batch_fails_only_its_request(engine, monkeypatch):
    original = engine._run_chunk

    def flaky(chunk, return_float=False):
        if any(it.req.request_id == "boom" for it in chunk):
            raise RuntimeError("simulated device failure")
        return original(chunk, return_float)

    monkeypatch.setattr(engine, "_run_chunk", flaky)
    results = engine.generate(
        [
            GenerationRequest("a", None, seed=1, steps=2, request_id="ok1"),
            GenerationRequest("b", None, seed=2, steps=2, request_id="boom"),
            GenerationRequest("c", None, seed=3, steps=2, request_id="ok2"),
        ]
    )
    assert [r.ok for r in results] == [True, False, True]
    assert "simulated device failure" in results[1].error


def test_groups_by_steps_and_size(engine, adapters):
    reqs = [
        GenerationRequest("a", adapters[0], seed=1, steps=3),
        GenerationRequest("b", adapters[1], seed=2, steps=2, width=128, height=192),
        GenerationRequest("c", None, seed=3, steps=3),
        GenerationRequest("d", adapters[2], seed=4, steps=2, width=128, height=192),
    ]
    before = engine.stats.batches
    results = engine.generate(reqs)
    assert engine.stats.batches - before == 2
    assert [r.batch_size for r in results] == [2, 2, 2, 2]
    assert results[1].image.shape == (192, 128, 3) and results[0].image.shape == (256, 256, 3)


# ---------------------------------------------------------------------------------------------------------
# The UNet is restored exactly


def test_unet_exactly_restored(engine, base, adapters):
    unet = base.unet
    modules_before = [(name, id(m), type(m)) for name, m in unet.named_modules()]
    state_before = {k: v.clone() for k, v in unet.state_dict().items()}
    sample = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_before = unet(sample, 10, encoder_hidden_states=text).sample

    engine.generate(
        [GenerationRequest("a", adapters[0], seed=1, steps=2), GenerationRequest("b", adapters[1], seed=1, steps=2)]
    )
    handle = install_multi_lora(unet)
    assert len(handle.layers) == 48 and all(isinstance(m, MultiLoRALinear) for m in target_layers(unet).values())
    with torch.no_grad():  # installed, no adapters set: exactly the base
        assert torch.equal(unet(sample, 10, encoder_hidden_states=text).sample, out_before)
    assert uninstall_multi_lora(unet)
    assert not uninstall_multi_lora(unet)

    assert [(name, id(m), type(m)) for name, m in unet.named_modules()] == modules_before
    state_after = unet.state_dict()
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[k], v) for k, v in state_before.items())
    with torch.no_grad():
        assert torch.equal(unet(sample, 10, encoder_hidden_states=text).sample, out_before)


# ---------------------------------------------------------------------------------------------------------
# The adapter cache


class _SlowStore:
    """An ORDER-role store wrapper that counts reads and can be slowed down."""

    def __init__(self, inner: LocalBlobStore, delay: float = 0.0) -> None:
        self.inner, self.role, self.delay, self.reads = inner, inner.role, delay, 0
        self._lock = threading.Lock()

    def read(self, kind: str, blob_id: str, *, key_id: str) -> bytes:
        with self._lock:
            self.reads += 1
        time.sleep(self.delay)
        return self.inner.read(kind, blob_id, key_id=key_id)


class _Writer:
    """The trainer-role store, every adapter sealed with one person's key (`key`)."""

    def __init__(self, inner: LocalBlobStore, key: str) -> None:
        self.inner, self.role, self.key = inner, inner.role, key

    def create(self, kind: str, data: bytes) -> str:
        return self.inner.create(kind, data, key_id=self.key)


@pytest.fixture
def stores(tmp_path):
    kr = make_keyring(tmp_path / "keys")
    writer = _Writer(LocalBlobStore(tmp_path / "blobs", Role.TRAINER, kr), kr.new_key())
    reader = LocalBlobStore(tmp_path / "blobs", Role.ORDER, kr)
    return writer, reader


def test_cache_lru_by_bytes_hits_and_reload(stores, adapter_bytes, base, engine):
    writer, reader = stores
    ids = [writer.create("models", data) for data in adapter_bytes]
    sizes = [tensor_bytes(parse_adapter_bytes(d)) for d in adapter_bytes]  # ranks 4, 8, 2
    assert sizes[1] == 2 * sizes[0] == 4 * sizes[2]
    cache = AdapterCache(reader, max_bytes=sizes[0] + sizes[1] + 1, base_fingerprint=base.fingerprint)

    a = cache.get("m0", ids[0], writer.key)
    assert cache.get("m0", ids[0], writer.key) is a  # hit: the same parsed dict
    cache.get("m2", ids[2], writer.key)
    cache.get("m0", ids[0], writer.key)  # m0, inserted first, is now the most recently used
    assert cache.keys() == ["m2", "m0"]
    s = cache.stats
    assert (s.hits, s.misses, s.evictions, s.entries, s.bytes) == (2, 2, 0, 2, sizes[0] + sizes[2])

    cache.get("m1", ids[1], writer.key)  # rank 8 needs room: only the least recently used one (m2) goes
    assert cache.keys() == ["m0", "m1"] and cache.stats.evictions == 1 and cache.stats.bytes == sizes[0] + sizes[1]
    cache.get("m2", ids[2], writer.key)  # an evicted key reloads (a miss) and pushes out the LRU one (m0)
    assert cache.keys() == ["m1", "m2"]
    assert (cache.stats.misses, cache.stats.evictions) == (4, 2)

    # the parsed adapter is the trainer's state dict and drives the engine
    trainer_dict = load_adapter_bytes(adapter_bytes[0])
    reloaded = cache.get("m0", ids[0], writer.key)
    assert reloaded.keys() == trainer_dict.keys() and all(
        torch.equal(reloaded[k], trainer_dict[k]) for k in trainer_dict
    )
    req = dict(prompt="a photo of sks person", seed=9, steps=2)
    img_cache, img_trainer = engine.generate(
        [GenerationRequest(adapter=reloaded, **req), GenerationRequest(adapter=trainer_dict, **req)]
    )
    assert np.array_equal(img_cache.image, img_trainer.image)


def test_cache_evict_and_reload(stores, adapter_bytes):
    writer, reader = stores
    store = _SlowStore(reader)
    blob = writer.create("models", adapter_bytes[0])
    cache = AdapterCache(store, max_bytes=10**9)
    first = cache.get("k", blob, writer.key)
    assert cache.evict("k") and not cache.evict("k") and "k" not in cache
    again = cache.get("k", blob, writer.key)
    assert again is not first and all(torch.equal(again[k], first[k]) for k in first)
    assert store.reads == 2 and cache.stats.misses == 2 and cache.stats.hits == 0
    # a new blob for the same model version replaces the entry
    blob2 = writer.create("models", adapter_bytes[2])
    assert cache.get("k", blob2, writer.key).keys() == parse_adapter_bytes(adapter_bytes[2]).keys()
    assert len(cache) == 1


def test_cache_rejects_corrupt_bytes(stores, adapter_bytes, base):
    writer, reader = stores
    good = adapter_bytes[0]
    tensors = parse_adapter_bytes(good)
    half = {k: v for k, v in tensors.items() if k.endswith("down.weight")}
    nan = {k: v * float("nan") for k, v in tensors.items()}
    wrong = {"unet.x.to_q.lora.down.weight": torch.zeros(4, 8), "unet.x.to_q.lora.up.weight": torch.zeros(8, 3)}
    bad = {
        "random": b"\x00" * 7 + b"not safetensors at all" * 3,
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "foreign-keys": safetensors.torch.save({"model.weight": torch.zeros(2, 2)}),
        "half-missing": safetensors.torch.save(half),
        "non-finite": safetensors.torch.save(nan),
        "shapes": safetensors.torch.save(wrong),
    }
    cache = AdapterCache(reader, max_bytes=10**9)
    for name, data in bad.items():
        blob = writer.create("models", data)
        with pytest.raises(AdapterCorrupt):
            cache.get(name, blob, writer.key)
        assert name not in cache
    with pytest.raises(AdapterNotFound):
        cache.get("gone", "0" * 32, writer.key)
    # trained on another base: refused when the cache knows its base
    strict = AdapterCache(reader, max_bytes=10**9, base_fingerprint="0" * 64)
    with pytest.raises(AdapterMismatchedBase):
        strict.get("m", writer.create("models", good), writer.key)
    with pytest.raises(ValueError):
        AdapterCache(writer, max_bytes=10**9)  # the trainer role may not read models/


def test_cache_is_thread_safe_and_fetches_once(stores, adapter_bytes):
    writer, reader = stores
    store = _SlowStore(reader, delay=0.2)
    blob = writer.create("models", adapter_bytes[1])
    cache = AdapterCache(store, max_bytes=10**9)
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", blob, writer.key))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.reads == 1 and len(got) == 8 and all(g is got[0] for g in got)
    assert cache.stats.misses == 1 and cache.stats.hits == 7


def test_cache_keeps_adapters_prepared_for_the_engine(stores, adapter_bytes, engine):
    """With `prepare`, an adapter is validated and placed for the engine once per fetch, not once per request."""
    writer, reader = stores
    blob = writer.create("models", adapter_bytes[0])
    calls = []

    def prepare(tensors):
        calls.append(1)
        return engine.prepare_adapter(tensors)

    cache = AdapterCache(reader, max_bytes=10**9, prepare=prepare)
    first = cache.get("m", blob, writer.key)
    assert isinstance(first, LoRAWeights) and cache.get("m", blob, writer.key) is first and len(calls) == 1
    assert cache.stats.bytes == tensor_bytes(parse_adapter_bytes(adapter_bytes[0]))
    req = dict(prompt="a photo of sks person", seed=3, steps=2)
    cached, fresh = engine.generate(
        [
            GenerationRequest(adapter=first, **req),
            GenerationRequest(adapter=parse_adapter_bytes(adapter_bytes[0]), **req),
        ]
    )
    assert cached.ok and fresh.ok and np.array_equal(cached.image, fresh.image)

    # An adapter whose layers do not fit the base is refused as such, and nothing is cached.
    alien = {"unet.x.to_q.lora.down.weight": torch.zeros(4, 8), "unet.x.to_q.lora.up.weight": torch.zeros(8, 4)}
    other = writer.create("models", safetensors.torch.save(alien))
    with pytest.raises(AdapterMismatchedBase, match="does not fit the base"):
        cache.get("x", other, writer.key)
    assert "x" not in cache


def test_cache_opens_adapters_with_their_owners_key_only(tmp_path, adapter_bytes):
    """An adapter is sealed with its owner's data key: another key does not open it (refused as corrupt, even
    when the blob is cached under that model version), and once the key is shredded it is gone."""
    kr = make_keyring(tmp_path / "keys")
    owner, other = kr.new_key(), kr.new_key()
    writer = LocalBlobStore(tmp_path / "blobs", Role.TRAINER, kr)
    store = _SlowStore(LocalBlobStore(tmp_path / "blobs", Role.ORDER, kr))
    blob = writer.create("models", adapter_bytes[0], key_id=owner)
    cache = AdapterCache(store, max_bytes=10**9)
    with pytest.raises(AdapterCorrupt, match="does not open"):
        cache.get("m", blob, other)
    assert "m" not in cache
    first = cache.get("m", blob, owner)
    with pytest.raises(AdapterCorrupt):  # a cached entry is a hit only for the key it was opened with
        cache.get("m", blob, other)
    assert "m" in cache and store.reads == 3  # the owner's entry stays; the other key's fetch failed
    assert cache.get("m", blob, owner) is first and store.reads == 3
    cache.evict("m")
    kr.shred(owner)
    with pytest.raises(AdapterNotFound, match="shredded"):
        cache.get("m", blob, owner)
    assert first.keys() == parse_adapter_bytes(adapter_bytes[0]).keys()
