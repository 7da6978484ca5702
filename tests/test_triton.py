"""The real Triton server from the nvidia-pytriton wheel serving `triton_models/faceharmony_diffusion`.

One server per module, on a temporary data folder holding the tiny base pipeline (`build_tiny_pipeline`)
and two tiny adapters trained here as tests/test_inference_engine.py does, stored in `models/` with the
trainer's role, sealed with a data key of the data folder's keyring. The model reads them with the order role
and opens them with its own keyring (ADAPTER_KEY_ID), as in production.

What it proves:
* requests of two users' adapters sent concurrently are dynamically batched: Triton's statistics show an
  execution with batch size > 1 (the model passes a whole Triton batch to one `engine.generate`);
* each image has the requested size and equals the in-process `BatchedGenerator` run on the same request
  alone, within UINT8_TOL grey levels (batched vs single kernels differ by ~1e-6 in float; an image can
  flip one level where a value sits on a rounding edge);
* no pixel leaves the model plain: each image comes back sealed with the request's ADAPTER_KEY_ID (IMAGE_SEALED),
  and neither those bytes nor the server's shared-memory files (/dev/shm, triton_launcher/shm.py) hold a slice
  of its raw pixels; it opens only with its own key and as the answer to its own request;
* a request with an unknown adapter blob id, one with another person's key, one without a key id, and one with
  an invalid size, in the same batch fail alone, each with its reason in its own response;
* EVICT_KEYS drops a model version from the adapter cache (models pending deletion).

The whole file takes about 15 s on an idle 2-core CPU (server ready in ~5 s).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.keyrings import make_keyring
from tests.support.triton import require_triton, train_tiny_adapters, triton_env

require_triton()

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from faceharmony.core.blobstore.base import Role  # noqa: E402
from faceharmony.core.blobstore.local import LocalBlobStore  # noqa: E402
from faceharmony.core.diffusion.adapter_format import parse_adapter_bytes  # noqa: E402
from faceharmony.core.diffusion.engine import BatchedGenerator, GenerationRequest  # noqa: E402
from faceharmony.core.diffusion.pipeline import build_tiny_pipeline, load_base  # noqa: E402
from faceharmony.core.diffusion.sealed_image import open_image  # noqa: E402
from faceharmony.core.keys.aead import is_sealed, triton_image_aad  # noqa: E402
from faceharmony.core.keys.errors import CiphertextInvalid  # noqa: E402
from faceharmony.triton_launcher.server import start_triton  # noqa: E402
from faceharmony.triton_launcher.shm import REGION_PREFIX, SHM_DIR  # noqa: E402

pytestmark = pytest.mark.triton

MODEL = "faceharmony_diffusion"
STEPS = 4
WIDTH, HEIGHT = 96, 64  # not square: catches a swapped width/height
UINT8_TOL = 1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("triton-data")
    build_tiny_pipeline(path / "base-model", seed=0)
    return path


@pytest.fixture(scope="module")
def base(data_dir):
    return load_base(data_dir / "base-model", device="cpu")


@pytest.fixture(scope="module")
def keyring(data_dir):
    """The data folder's keyring: the one the Triton model opens (install_keyring over FACEHARMONY_DATA_DIR)."""
    return make_keyring(data_dir / "keys")


@pytest.fixture(scope="module")
def adapter_key(keyring) -> str:
    return keyring.new_key()


@pytest.fixture(scope="module")
def adapters(data_dir, base, keyring, adapter_key) -> dict[str, bytes]:
    """Two users' adapters, stored as the trainer stores them: blob id -> safetensors bytes."""
    store = LocalBlobStore(data_dir / "blobs", Role.TRAINER, keyring)
    return train_tiny_adapters(base, store, key_id=adapter_key)


@pytest.fixture(scope="module")
def server(data_dir, adapters, tmp_path_factory):
    t0 = time.perf_counter()
    with start_triton(tmp_path_factory.mktemp("triton"), env=triton_env(data_dir), ready_timeout=120) as srv:
        print(f"\ntritonserver ready in {time.perf_counter() - t0:.1f}s")
        yield srv
        if srv.process.poll() is not None:
            print(srv.log_tail())


@pytest.fixture()
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _input(name: str, value, dtype: str) -> grpcclient.InferInput:
    arr = np.array(
        [[value]],
        dtype=object if dtype == "BYTES" else {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32}[dtype],
    )
    x = grpcclient.InferInput(name, list(arr.shape), dtype)
    x.set_data_from_numpy(arr)
    return x


def _inputs(
    prompt: str, blob_id: str, key: str, seed: int, guidance: float, width=WIDTH, height=HEIGHT, negative="", *, key_id
):
    return [
        _input("PROMPT", prompt.encode(), "BYTES"),
        _input("NEGATIVE_PROMPT", negative.encode(), "BYTES"),
        _input("ADAPTER_BLOB_ID", blob_id.encode(), "BYTES"),
        *([_input("ADAPTER_KEY_ID", key_id.encode(), "BYTES")] if key_id else []),
        _input("MODEL_VERSION_KEY", key.encode(), "BYTES"),
        _input("SEED", seed, "INT64"),
        _input("STEPS", STEPS, "INT32"),
        _input("GUIDANCE", guidance, "FP32"),
        _input("WIDTH", width, "INT32"),
        _input("HEIGHT", height, "INT32"),
    ]


def _send_concurrently(client, batches: list[list]) -> list:
    """async_infer all at once; returns per request the IMAGE_SEALED array ([1, 1] bytes) or the
    InferenceServerException."""
    results: list = [None] * len(batches)
    done = threading.Semaphore(0)

    def callback(i):
        def cb(result, error):
            results[i] = error if error is not None else result.as_numpy("IMAGE_SEALED")
            done.release()

        return cb

    for i, inputs in enumerate(batches):
        client.async_infer(MODEL, inputs, callback(i), outputs=[grpcclient.InferRequestedOutput("IMAGE_SEALED")])
    for _ in batches:
        assert done.acquire(timeout=120), "Triton did not answer in time"
    return results


def _opened(keyring, sealed, blob_id: str, key: str, seed: int, key_id: str) -> np.ndarray:
    """The [H, W, 3] pixels of one IMAGE_SEALED answer, opened as the order worker opens them."""
    assert isinstance(sealed, np.ndarray), sealed
    assert sealed.shape == (1, 1) and isinstance(sealed[0, 0], bytes) and is_sealed(sealed[0, 0])
    return open_image(keyring, key_id, sealed[0, 0], triton_image_aad(blob_id, key, seed, key_id))


def _batch_sizes(client) -> dict[int, int]:
    """Executions of the model so far, by Triton batch size."""
    stats = client.get_inference_statistics(MODEL, as_json=True)
    return {
        int(b["batch_size"]): int(b["compute_infer"].get("count", 0))
        for b in stats["model_stats"][0].get("batch_stats", [])
    }


def _batch_sizes_after(client, before: dict[int, int], requests: int, timeout: float = 10.0) -> dict[int, int]:
    """New executions by batch size once they cover `requests` requests: the backend reports an execution's
    statistics after its responses are sent, so a client can see its answers before the statistics."""
    deadline = time.monotonic() + timeout
    while True:
        grown = {bs: n - before.get(bs, 0) for bs, n in _batch_sizes(client).items() if n > before.get(bs, 0)}
        if sum(bs * n for bs, n in grown.items()) >= requests or time.monotonic() > deadline:
            return grown
        time.sleep(0.05)


def test_mixed_users_batched_equal_single_requests_and_bad_requests_fail_alone(
    client, adapters, base, keyring, adapter_key
):
    (blob_a, bytes_a), (blob_b, bytes_b) = adapters.items()
    missing = "0123456789abcdef0123456789abcdef"  # well-formed, never stored
    good = [
        ("a photo of sks person", blob_a, "model-a:1", 11, 7.5, ""),
        ("a photo of sks person", blob_a, "model-a:1", 12, 7.5, "blurry"),
        ("a portrait of sks person", blob_b, "model-b:1", 11, 5.0, ""),
        ("a portrait of sks person", blob_b, "model-b:1", 12, 5.0, "low quality"),
    ]
    k = adapter_key
    requests = [_inputs(p, b, mk, s, g, negative=n, key_id=k) for p, b, mk, s, g, n in good]
    requests.insert(2, _inputs("a photo of sks person", missing, "model-x:1", 11, 7.5, key_id=k))  # unknown adapter
    requests.append(_inputs("a photo of sks person", blob_a, "model-a:1", 13, 7.5, width=50, key_id=k))  # bad size
    other = keyring.new_key()  # another person's key: the adapter does not open with it
    requests.append(_inputs("a photo of sks person", blob_b, "model-y:1", 13, 7.5, key_id=other))
    requests.append(_inputs("a photo of sks person", blob_b, "model-z:1", 13, 7.5, key_id=""))  # no key id

    before = _batch_sizes(client)
    t0 = time.perf_counter()
    results = _send_concurrently(client, requests)
    elapsed = time.perf_counter() - t0
    grown = _batch_sizes_after(client, before, len(requests))

    unknown, no_key, wrong_key, bad_size = results.pop(2), results.pop(), results.pop(), results.pop()
    assert isinstance(wrong_key, InferenceServerException), wrong_key
    assert "does not open" in wrong_key.message()
    assert isinstance(no_key, InferenceServerException), no_key
    assert "ADAPTER_KEY_ID is required" in no_key.message()
    assert isinstance(unknown, InferenceServerException), unknown
    assert "not found" in unknown.message() and missing in unknown.message()
    assert isinstance(bad_size, InferenceServerException), bad_size
    assert "width must be a multiple of 8" in bad_size.message()

    # Equal to the engine in-process, each request alone with its adapter.
    engine = BatchedGenerator(base)
    parsed = {blob_a: parse_adapter_bytes(bytes_a), blob_b: parse_adapter_bytes(bytes_b)}
    diffs = []
    images = []
    for (prompt, blob, key, seed, guidance, negative), sealed in zip(good, results):
        image = _opened(keyring, sealed, blob, key, seed, k)
        assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
        alone = engine.generate(
            [GenerationRequest(prompt, parsed[blob], negative or None, seed, STEPS, guidance, WIDTH, HEIGHT)]
        )[0]
        assert alone.ok and alone.batch_size == 1
        diffs.append(int(np.abs(image.astype(int) - alone.image.astype(int)).max()))
        images.append(image.astype(int))
    # The comparison means something: other seed or other user's adapter -> visibly another image.
    assert np.abs(images[0] - images[1]).mean() > 2 and np.abs(images[0] - images[2]).mean() > 2

    print(
        f"\n{len(requests)} concurrent requests answered in {elapsed:.2f}s; max uint8 diff vs alone {diffs}; "
        f"executions by batch size {grown}"
    )
    assert max(diffs) <= UINT8_TOL
    assert any(bs > 1 and n > 0 for bs, n in grown.items()), grown


def _pixel_slices(image: np.ndarray, count: int = 24, size: int = 48) -> list[bytes]:
    """`count` slices of `size` bytes spread over the raw pixels: a copy of the image holds every one."""
    raw = np.ascontiguousarray(image).tobytes()
    return [raw[i : i + size] for i in np.linspace(0, len(raw) - size, count).astype(int)]


def _shm_regions(server) -> list[Path]:
    """The shared-memory files of this server's launch (the Python backend's requests and responses)."""
    (lock,) = (server.shm_locks).glob("*.lock")
    return sorted(SHM_DIR.glob(f"{REGION_PREFIX}{lock.stem}_*"))


def test_images_leave_triton_sealed_with_the_requests_key(client, server, adapters, base, keyring, adapter_key):
    """The answer is sealed bytes that hold no slice of the image's pixels, nor do Triton's shared-memory files;
    it opens to the engine's image with the request's key, and not with another key or as another request's."""
    blob_a, bytes_a = next(iter(adapters.items()))
    other = keyring.new_key()  # another person's: the bare base sealed with it
    prompt, seed = "a photo of sks person", 21
    asked = [(blob_a, "model-a:1", adapter_key), ("", "", other)]
    results = _send_concurrently(
        client, [_inputs(prompt, blob, mk, seed, 7.5, key_id=key_id) for blob, mk, key_id in asked]
    )
    engine = BatchedGenerator(base)
    alone = engine.generate(
        [
            GenerationRequest(prompt, parse_adapter_bytes(bytes_a), None, seed, STEPS, 7.5, WIDTH, HEIGHT),
            GenerationRequest(prompt, None, None, seed, STEPS, 7.5, WIDTH, HEIGHT),
        ]
    )
    regions = _shm_regions(server)
    assert regions, "no shared-memory region of this launch found"
    shm = b"".join(path.read_bytes() for path in regions)
    # The scan sees what passes there: the responses go through these files (so would raw pixels).
    assert any(r[0, 0] in shm for r in results)
    opened = []
    for (blob, mk, key_id), sealed, expected in zip(asked, results, alone):
        image = _opened(keyring, sealed, blob, mk, seed, key_id)
        assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
        assert int(np.abs(image.astype(int) - expected.image.astype(int)).max()) <= UINT8_TOL
        slices = _pixel_slices(image)
        assert not [s for s in slices if s in sealed[0, 0]], "raw pixels in the bytes Triton returned"
        assert not [s for s in slices if s in shm], "raw pixels in Triton's shared-memory files"
        opened.append(image)
    assert np.abs(opened[0].astype(int) - opened[1].astype(int)).mean() > 2  # two different images

    # Each opens with its own key only, and only as the answer to its own request.
    (sealed_a, sealed_b) = (r[0, 0] for r in results)
    with pytest.raises(CiphertextInvalid):
        open_image(keyring, other, sealed_a, triton_image_aad(blob_a, "model-a:1", seed, other))
    with pytest.raises(CiphertextInvalid):
        open_image(keyring, adapter_key, sealed_b, triton_image_aad("", "", seed, adapter_key))
    with pytest.raises(CiphertextInvalid):  # the right key, another seed
        open_image(keyring, adapter_key, sealed_a, triton_image_aad(blob_a, "model-a:1", seed + 1, adapter_key))
    with pytest.raises(CiphertextInvalid):  # the right key, another model version
        open_image(keyring, adapter_key, sealed_a, triton_image_aad(blob_a, "model-a:2", seed, adapter_key))


def test_evict_keys_drops_a_cached_model_version(client, adapters, keyring, adapter_key):
    blob_a = next(iter(adapters))
    first = _send_concurrently(
        client, [_inputs("a photo of sks person", blob_a, "model-evict:1", 1, 7.5, key_id=adapter_key)]
    )[0]
    first = _opened(keyring, first, blob_a, "model-evict:1", 1, adapter_key)

    def evict(key: str) -> int:
        keys = np.array([[key.encode()]], dtype=object)
        x = grpcclient.InferInput("EVICT_KEYS", list(keys.shape), "BYTES")
        x.set_data_from_numpy(keys)
        return int(
            client.infer(MODEL, [x], outputs=[grpcclient.InferRequestedOutput("EVICTED")]).as_numpy("EVICTED")[0, 0]
        )

    assert evict("model-evict:1") == 1  # it was cached
    assert evict("model-evict:1") == 0  # and is gone
    again = _send_concurrently(
        client, [_inputs("a photo of sks person", blob_a, "model-evict:1", 1, 7.5, key_id=adapter_key)]
    )[0]
    assert np.array_equal(first, _opened(keyring, again, blob_a, "model-evict:1", 1, adapter_key))  # refetched


def test_request_without_prompt_fails_alone(client):
    x = grpcclient.InferInput("SEED", [1, 1], "INT64")
    x.set_data_from_numpy(np.array([[1]], dtype=np.int64))
    with pytest.raises(InferenceServerException, match="PROMPT is required"):
        client.infer(MODEL, [x])
    assert client.is_model_ready(MODEL)
