"""Per-step continuous batching (core/diffusion/continuous.py): a request that joins a running denoising loop
mid-way gives the image it gives alone, in a fixed batch, and through diffusers' own `load_lora_weights` path
(the engine's tolerance, tests/test_inference_engine.py), for Euler, Euler ancestral and DPM-Solver++; the batch
bound and the memory budget hold and the queue is served in order; image sizes run as separate batches; a bad
request, a failing step and a cancelled request each fail alone; the threaded loop serves and stops cleanly.

Driven through `step()` (one call is one step boundary), so where a request joins is exact, not timing."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from faceharmony.core.diffusion.continuous import CANCELLED, STOPPED, ContinuousBatcher
from faceharmony.core.diffusion.engine import BatchedGenerator, GenerationRequest, GenerationResult
from faceharmony.core.diffusion.multi_lora import MultiLoRALinear
from tests import test_inference_engine as shared
from tests.test_inference_engine import FLOAT_TOL, UINT8_TOL, _diffusers_image

# The engine tests' module-scoped fixtures: the tiny base, its engine, three trained adapters, diffusers' pipeline.
folder, base, engine = shared.folder, shared.base, shared.engine
adapter_bytes, adapters, reference_pipe = shared.adapter_bytes, shared.adapters, shared.reference_pipe

pytestmark = pytest.mark.torch

STEPS = 8


class Results:
    """Collects each request's result by request id (the `done` callback)."""

    def __init__(self) -> None:
        self.by_id: dict[str, GenerationResult] = {}
        self.lock = threading.Lock()

    def __call__(self, result: GenerationResult) -> None:
        with self.lock:
            assert result.request_id not in self.by_id, "a request answered twice"
            self.by_id[result.request_id] = result


def drain(batcher: ContinuousBatcher, limit: int = 200) -> int:
    n = 0
    while batcher.pending():
        batcher.step()
        n += 1
        assert n < limit, "the batcher did not finish"
    return n


def uint8_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_joining_mid_loop_gives_the_image_alone_and_diffusers_give(engine, adapters, adapter_bytes, reference_pipe):
    a1, a2, a3 = adapters
    batcher = ContinuousBatcher(engine, return_float=True)
    got = Results()
    first = GenerationRequest("a photo of sks person", a1, seed=11, steps=STEPS, guidance_scale=7.5, request_id="a")
    later = [
        GenerationRequest(
            "a portrait of a woman", a2, "blurry", seed=22, steps=STEPS, guidance_scale=5.0, request_id="b"
        ),
        GenerationRequest("a photo of a cat", a3, seed=33, steps=STEPS, guidance_scale=1.0, request_id="c"),
    ]
    # Another step count in the same running batch: its own sigma schedule.
    last = GenerationRequest(
        "a photo of a dog", None, "low quality", seed=44, steps=5, guidance_scale=3.0, request_id="d"
    )
    batcher.submit(first, got)
    for _ in range(3):
        batcher.step()
    for req in later:
        batcher.submit(req, got)
    batcher.step()
    batcher.step()
    batcher.submit(last, got)
    drain(batcher)
    assert batcher.stats.joined_running == 3
    requests = [first, *later, last]
    sources = [adapter_bytes[0], adapter_bytes[1], adapter_bytes[2], None]
    assert all(got.by_id[r.request_id].ok for r in requests), {k: v.error for k, v in got.by_id.items()}
    assert got.by_id["a"].batch_size == 4 and got.by_id["d"].batch_size == 4  # all four shared steps

    alone = {r.request_id: engine.generate([r], return_float=True)[0] for r in requests}
    fixed = dict(zip([r.request_id for r in requests], engine.generate(requests, return_float=True)))
    float_diffs = []
    for req, src in zip(requests, sources):
        res = got.by_id[req.request_id]
        ref = _diffusers_image(reference_pipe, req, src)
        float_diffs.append(float(np.abs(res.pixels - ref).max()))
        assert float_diffs[-1] <= FLOAT_TOL, req.request_id
        assert uint8_diff(res.image, np.round(ref * 255).astype(np.uint8)) <= UINT8_TOL, req.request_id
        assert float(np.abs(res.pixels - alone[req.request_id].pixels).max()) <= FLOAT_TOL, req.request_id
        assert uint8_diff(res.image, fixed[req.request_id].image) <= UINT8_TOL, req.request_id
    print(f"\njoined mid-way vs diffusers: max |float diff| {[f'{d:.1e}' for d in float_diffs]}")
    # The comparison means something: the adapters move the images far beyond the tolerance.
    bare = engine.generate([GenerationRequest(first.prompt, None, seed=11, steps=STEPS)])[0]
    assert np.abs(got.by_id["a"].image.astype(int) - bare.image.astype(int)).mean() > 2


@pytest.mark.parametrize("scheduler_name", ["EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_other_schedulers_join_mid_loop_exactly(base, adapters, adapter_bytes, reference_pipe, scheduler_name):
    import diffusers

    cls = getattr(diffusers, scheduler_name)
    scheduler = cls.from_config(reference_pipe.scheduler.config)
    engine = BatchedGenerator(base, scheduler=scheduler)
    batcher = ContinuousBatcher(engine, return_float=True)
    got = Results()
    a = GenerationRequest("a photo of sks person", adapters[0], seed=5, steps=6, guidance_scale=7.5, request_id="a")
    b = GenerationRequest("a photo of a cat", adapters[1], seed=6, steps=6, guidance_scale=4.0, request_id="b")
    batcher.submit(a, got)
    batcher.step()
    batcher.step()
    batcher.submit(b, got)
    drain(batcher)
    assert batcher.stats.joined_running == 1
    original = reference_pipe.scheduler
    reference_pipe.scheduler = cls.from_config(original.config)
    try:
        for req, src in ((a, adapter_bytes[0]), (b, adapter_bytes[1])):
            ref = _diffusers_image(reference_pipe, req, src)
            res = got.by_id[req.request_id]
            assert res.ok, res.error
            assert float(np.abs(res.pixels - ref).max()) <= FLOAT_TOL, (scheduler_name, req.request_id)
            assert uint8_diff(res.image, np.round(ref * 255).astype(np.uint8)) <= UINT8_TOL
    finally:
        reference_pipe.scheduler = original


def test_the_batch_bound_and_the_memory_budget_hold_and_the_queue_is_served_in_order(engine):
    native = engine.base.resolution
    # Room for 3 UNet rows: a guided sample (2 rows) and an unguided one (1 row).
    batcher = ContinuousBatcher(engine, max_batch=3, max_pixels=3 * native * native)
    got = Results()
    order = []

    def done(result):
        order.append(result.request_id)
        got(result)

    batcher.submit(GenerationRequest("a", None, seed=1, steps=3, guidance_scale=7.5, request_id="g1"), done)
    batcher.submit(GenerationRequest("b", None, seed=2, steps=3, guidance_scale=7.5, request_id="g2"), done)
    batcher.submit(GenerationRequest("c", None, seed=3, steps=3, guidance_scale=1.0, request_id="u1"), done)
    batcher.step()
    # g2 does not fit beside g1 (4 rows); u1 would, but does not jump the queue.
    assert [s.item.req.request_id for b in batcher._running.values() for s in b] == ["g1"]
    assert [s.item.req.request_id for s in batcher._waiting] == ["g2", "u1"]
    peak_pixels = 0
    while batcher.pending():
        batcher.step()
        peak_pixels = max(peak_pixels, batcher._running_pixels())
        assert sum(len(b) for b in batcher._running.values()) <= 3
    assert peak_pixels <= batcher.max_pixels
    assert order == ["g1", "g2", "u1"] and all(r.ok for r in got.by_id.values())
    # A request that can never fit fails at once, with the reason.
    assert not batcher.submit(GenerationRequest("x", None, steps=2, width=512, height=512, request_id="big"), got)
    assert got.by_id["big"].error.startswith("BUDGET:")
    # The batch bound alone: with room for everything, never more than max_batch samples of a size.
    bounded = ContinuousBatcher(engine, max_batch=2)
    for i in range(5):
        bounded.submit(GenerationRequest("p", None, seed=i, steps=2, request_id=f"n{i}"), got)
    drain(bounded)
    assert max(bounded.stats.batch_sizes) == 2 and bounded.stats.images == 5
    # Idle again: the UNet's projections are unwrapped (they stay wrapped only while there is work).
    assert not any(isinstance(m, MultiLoRALinear) for m in engine.base.unet.modules())


def test_sizes_run_as_separate_batches(engine, adapters):
    batcher = ContinuousBatcher(engine)
    got = Results()
    reqs = [
        GenerationRequest("a", adapters[0], seed=1, steps=3, request_id="big1"),
        GenerationRequest("b", adapters[1], seed=2, steps=3, width=128, height=192, request_id="small1"),
        GenerationRequest("c", None, seed=3, steps=3, request_id="big2"),
        GenerationRequest("d", adapters[2], seed=4, steps=3, width=128, height=192, request_id="small2"),
    ]
    for r in reqs:
        batcher.submit(r, got)
    drain(batcher)
    assert batcher.stats.batch_sizes == [2, 2] * 3  # one forward per size per step
    assert got.by_id["small1"].image.shape == (192, 128, 3) and got.by_id["big1"].image.shape == (256, 256, 3)
    fixed = engine.generate(reqs)
    for r, expected in zip(reqs, fixed):
        assert uint8_diff(got.by_id[r.request_id].image, expected.image) <= UINT8_TOL


def test_a_bad_request_a_failing_step_and_a_cancelled_request_each_fail_alone(engine, adapters, monkeypatch):
    batcher = ContinuousBatcher(engine)
    got = Results()
    good = GenerationRequest("a photo of sks person", adapters[0], seed=3, steps=4, request_id="good")
    assert not batcher.submit(GenerationRequest("x", None, steps=0, request_id="steps-zero"), got)
    assert "steps" in got.by_id["steps-zero"].error
    stop = threading.Event()
    batcher.submit(good, got)
    batcher.submit(GenerationRequest("b", None, seed=4, steps=4, request_id="cancel"), got, cancelled=stop.is_set)
    batcher.submit(GenerationRequest("c", None, seed=5, steps=4, request_id="boom"), got)
    original = batcher._forward

    def flaky(handle, samples):
        if any(s.item.req.request_id == "boom" for s in samples) and samples[0].k == 1:
            raise RuntimeError("simulated device failure")
        return original(handle, samples)

    monkeypatch.setattr(batcher, "_forward", flaky)
    batcher.step()
    stop.set()
    drain(batcher)
    assert got.by_id["cancel"].error == CANCELLED and batcher.stats.cancelled == 1
    assert "simulated device failure" in got.by_id["boom"].error
    assert got.by_id["good"].ok
    alone = engine.generate([good])[0]
    assert uint8_diff(got.by_id["good"].image, alone.image) <= UINT8_TOL
    assert batcher.pending() == 0


def test_the_threaded_loop_admits_requests_while_it_runs_and_stops_cleanly(engine, adapters):
    batcher = ContinuousBatcher(engine)
    got = Results()
    batcher.start()
    try:
        reqs = [GenerationRequest(f"p{i}", adapters[i % 3], seed=i, steps=6, request_id=f"r{i}") for i in range(5)]
        for r in reqs:
            batcher.submit(r, got)
            time.sleep(0.05)
        deadline = time.monotonic() + 120
        while len(got.by_id) < len(reqs):
            assert time.monotonic() < deadline, "results did not arrive"
            time.sleep(0.05)
        assert all(r.ok for r in got.by_id.values())
        assert batcher.stats.joined_running >= 1  # later requests joined a loop already running
        # What is left when it stops is answered, not dropped.
        batcher.submit(GenerationRequest("late", None, seed=9, steps=150, request_id="late"), got)
    finally:
        batcher.stop()
    assert got.by_id["late"].error == STOPPED
    assert not batcher.submit(GenerationRequest("after", None, steps=2, request_id="after"), got)
    assert got.by_id["after"].error == STOPPED
    assert torch.is_inference_mode_enabled() is False
    assert not any(isinstance(m, MultiLoRALinear) for m in engine.base.unet.modules())
