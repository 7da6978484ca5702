"""The real Triton server serving `triton_models/faceharmony_diffusion_continuous` (decoupled, per-step
continuous batching), with the data folder, base pipeline and adapters of tests/test_triton.py.

What it proves:
* a short request sent while a long one is mid-loop joins that loop and is answered first (with request-level
  batching it would wait for the whole loop), and both images equal the in-process engine's for the same
  request alone (UINT8_TOL); the engine's metrics count the join;
* one response per request over a gRPC stream; a bad request fails alone, with its status in its message;
* a client that cancels its stream takes its request out of the loop (counted cancelled, nothing left running);
* evicting a model version (its model deleted) while one of its images is in the loop answers that image
  NOT_FOUND, and the eviction itself answers how many keys were cached;
* the order worker's TritonImages speaks streaming to this model: the same image, a refused adapter as
  TritonRejected, evictions.
"""

from __future__ import annotations

import queue
import urllib.request

import numpy as np
import pytest

from tests.support.triton import require_triton, triton_env

require_triton()

import tritonclient.grpc as grpcclient  # noqa: E402

from faceharmony.core.diffusion.adapter_format import parse_adapter_bytes  # noqa: E402
from faceharmony.core.diffusion.engine import BatchedGenerator, GenerationRequest  # noqa: E402
from faceharmony.triton_launcher.server import start_triton  # noqa: E402
from tests import test_triton as shared  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

pytestmark = pytest.mark.triton

MODEL = "faceharmony_diffusion_continuous"
WIDTH, HEIGHT, STEPS = shared.WIDTH, shared.HEIGHT, shared.STEPS
UINT8_TOL = shared.UINT8_TOL
LONG_STEPS = 150  # the engine's most: a loop long enough to join mid-way on any machine

data_dir, base, keyring, adapter_key, adapters = (
    shared.data_dir,
    shared.base,
    shared.keyring,
    shared.adapter_key,
    shared.adapters,
)


@pytest.fixture(scope="module")
def server(data_dir, adapters, tmp_path_factory):
    with start_triton(
        tmp_path_factory.mktemp("triton-continuous"), models=[MODEL], env=triton_env(data_dir), ready_timeout=120
    ) as srv:
        yield srv
        if srv.process.poll() is not None:
            print(srv.log_tail())


class Stream:
    """One gRPC stream: send requests, read their answers (result or error) in the order they come."""

    def __init__(self, server) -> None:
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.answers: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.answers.put((result, error)))

    def send(self, inputs, request_id: str, outputs=("IMAGE_SEALED",)) -> None:
        wanted = [grpcclient.InferRequestedOutput(o) for o in outputs]
        self.client.async_stream_infer(MODEL, inputs, request_id=request_id, outputs=wanted)

    def answer(self, timeout: float = 120):
        result, error = self.answers.get(timeout=timeout)
        return result, error

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _request(blob_id: str, key: str, seed: int, steps: int, *, key_id: str):
    inputs = shared._inputs("a photo of sks person", blob_id, key, seed, 7.5, key_id=key_id)
    steps_input = shared._input("STEPS", steps, "INT32")
    return [x if x.name() != "STEPS" else steps_input for x in inputs]


def _engine_metrics(server) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("faceharmony_engine_"):
            name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
            out[name] = out.get(name, 0.0) + value
    return out


def _alone(base, adapters, blob_id: str, seed: int, steps: int) -> np.ndarray:
    engine = BatchedGenerator(base)
    req = GenerationRequest(
        "a photo of sks person",
        parse_adapter_bytes(adapters[blob_id]),
        seed=seed,
        steps=steps,
        guidance_scale=7.5,
        width=WIDTH,
        height=HEIGHT,
    )
    return engine.generate([req])[0].image


def test_a_request_joins_the_running_loop_and_is_answered_before_it_ends(server, base, adapters, keyring, adapter_key):
    (blob_a, blob_b) = list(adapters)
    stream = Stream(server)
    joined_before = _engine_metrics(server).get("faceharmony_engine_joined_running_total", 0.0)
    try:
        stream.send(_request(blob_a, "a:1", 1, LONG_STEPS, key_id=adapter_key), "long")
        # Once the long one is in the loop (the engine's gauge), the short one arrives.
        wait_for(lambda: _engine_metrics(server).get("faceharmony_engine_running_samples", 0) >= 1, 30, "running")
        stream.send(_request(blob_b, "b:1", 2, STEPS, key_id=adapter_key), "short")
        first, error = stream.answer()
        assert error is None, error
        assert first.get_response().id == "short"  # answered while the long loop still runs
        second, error = stream.answer()
        assert error is None, error
        assert second.get_response().id == "long"
    finally:
        stream.close()
    short = shared._opened(keyring, first.as_numpy("IMAGE_SEALED"), blob_b, "b:1", 2, adapter_key)
    long = shared._opened(keyring, second.as_numpy("IMAGE_SEALED"), blob_a, "a:1", 1, adapter_key)
    assert short.shape == long.shape == (HEIGHT, WIDTH, 3)
    assert shared_diff(short, _alone(base, adapters, blob_b, 2, STEPS)) <= UINT8_TOL
    assert shared_diff(long, _alone(base, adapters, blob_a, 1, LONG_STEPS)) <= UINT8_TOL
    wait_for(
        lambda: _engine_metrics(server).get("faceharmony_engine_joined_running_total", 0) >= joined_before + 1,
        10,
        "the join counted",
    )


def shared_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_one_answer_per_request_and_a_bad_request_fails_alone_with_its_status(server, adapters, adapter_key):
    (blob_a, _) = list(adapters)
    stream = Stream(server)
    try:
        stream.send(_request(blob_a, "a:1", 5, STEPS, key_id=adapter_key), "good")
        stream.send(_request("models/" + "0" * 32, "gone:1", 6, STEPS, key_id=adapter_key), "unknown-adapter")
        stream.send(shared._inputs("x", blob_a, "a:1", 7, 7.5, width=100, key_id=adapter_key), "bad-size")
        stream.send([shared._input("SEED", 1, "INT64")], "no-prompt")
        answers = {}
        for _ in range(4):
            result, error = stream.answer()
            if error is not None:
                answers[error.message()] = error
            else:
                answers[result.get_response().id] = result
        with pytest.raises(queue.Empty):
            stream.answer(timeout=1)  # exactly one answer per request
    finally:
        stream.close()
    assert "good" in answers
    messages = [m for m in answers if m != "good"]
    assert len(messages) == 3
    assert any(m.startswith(("[NOT_FOUND] ", "[INVALID_ARGUMENT] ")) for m in messages)
    assert any(m.startswith("[INVALID_ARGUMENT] ") and "multiple of 8" in m for m in messages)
    assert any(m.startswith("[INVALID_ARGUMENT] ") and "PROMPT" in m for m in messages)


def test_a_cancelled_stream_takes_its_request_out_of_the_loop(server, adapters, adapter_key):
    (blob_a, _) = list(adapters)
    before = _engine_metrics(server).get("faceharmony_engine_cancelled_total", 0.0)
    stream = Stream(server)
    stream.send(_request(blob_a, "a:1", 9, LONG_STEPS, key_id=adapter_key), "to-cancel")
    wait_for(lambda: _engine_metrics(server).get("faceharmony_engine_running_samples", 0) >= 1, 30, "running")
    stream.close(cancel=True)
    wait_for(
        lambda: _engine_metrics(server).get("faceharmony_engine_cancelled_total", 0) >= before + 1, 60, "cancelled"
    )
    wait_for(lambda: _engine_metrics(server).get("faceharmony_engine_running_samples", 1) == 0, 10, "loop empty")


def test_evicting_a_model_version_answers_its_running_image_not_found(server, adapters, adapter_key):
    (blob_a, _) = list(adapters)
    stream, control = Stream(server), Stream(server)
    try:
        stream.send(_request(blob_a, "evict-me:1", 3, LONG_STEPS, key_id=adapter_key), "doomed")
        wait_for(lambda: _engine_metrics(server).get("faceharmony_engine_running_samples", 0) >= 1, 30, "running")
        keys = np.array([[b"evict-me:1"]], dtype=object)
        evict = grpcclient.InferInput("EVICT_KEYS", list(keys.shape), "BYTES")
        evict.set_data_from_numpy(keys)
        control.send([evict], "evict", outputs=("EVICTED",))
        result, error = control.answer()
        assert error is None and int(result.as_numpy("EVICTED")[0, 0]) == 1
        _, error = stream.answer()
        assert error is not None and error.message().startswith("[NOT_FOUND] "), error
    finally:
        stream.close()
        control.close()


def test_the_order_workers_client_speaks_streaming_to_the_decoupled_model(server, base, adapters, keyring, adapter_key):
    from faceharmony.order_worker.worker import TritonImages, TritonRejected

    (blob_a, _) = list(adapters)
    images = TritonImages(server.grpc_url, MODEL, 120, keyring)
    assert images.streaming
    request = dict(
        adapter_key_id=adapter_key,
        prompt="a photo of sks person",
        negative="",
        seed=4,
        steps=STEPS,
        guidance=7.5,
        width=WIDTH,
        height=HEIGHT,
    )
    pixels = images.generate(adapter_blob_id=blob_a, key="a:1", **request)
    assert shared_diff(pixels, _alone(base, adapters, blob_a, 4, STEPS)) <= UINT8_TOL
    with pytest.raises(TritonRejected) as refused:
        images.generate(adapter_blob_id="models/" + "1" * 32, key="gone:2", **request)
    assert refused.value.reason in ("MODEL_DELETED", "GENERATION_REFUSED")
    assert images.evict(["a:1"]) == 1
    # The same stream goes on serving after a refusal and an eviction.
    again = images.generate(adapter_blob_id=blob_a, key="a:1", **request)
    assert np.array_equal(again, pixels)
