"""The Triton target: one image request per call, straight to Triton's gRPC, checked the way the order side checks it.

Request `i` is one row (`[1, 1]` per input, as the order worker sends): a prompt from `PROMPTS`, the seed
`seed * 1_000_003 + i`, and one of the manifest's models drawn by a generator seeded with (seed, i), with its
ADAPTER_BLOB_ID, ADAPTER_KEY_ID and MODEL_VERSION_KEY, plus STEPS, GUIDANCE, WIDTH and HEIGHT. The answer is
good only if IMAGE_SEALED opens with the row's data key as the answer to exactly that request
(core/diffusion/sealed_image.py, `triton_image_aad`) and holds an image of the requested size. Anything else is
an error by reason: Triton's status name (NOT_FOUND, INVALID_ARG, UNAVAILABLE, ...), DEADLINE_EXCEEDED
(the client's timeout), CIPHERTEXT_INVALID, KEY_SHREDDED, BAD_RESPONSE or WRONG_SIZE.

`warm_up(first_index, control, duration_s)` sends one request per model, WARMUP_CONCURRENCY at a time and
within `duration_s` (what is not sent by then is not warmed), so every adapter is in Triton's cache before a
step. `TritonStatistics(url, model)` reads the model's entry of Triton's statistics API
(`get_inference_statistics`, JSON) for both targets; an answer it cannot get (Triton gone away) is
`{"error": reason}`, never an exception. Its `wait_statistics(before, succeeded)` waits until Triton has
counted `succeeded` more successful requests (it records an execution's statistics after sending its
responses) and its execution count has stopped changing (SETTLE_POLLS reads in a row), within
SETTLE_TIMEOUT_S; it returns the statistics and whether they settled.

One gRPC client per thread (as the order worker's TritonImages), opened on first use; to a decoupled model
(faceharmony_diffusion_continuous) one gRPC stream per thread over it (core/triton_streaming.py). The target refuses a
non-loopback URL unless allowed (address.py). It imports tritonclient (the triton extra): `require_tritonclient()`
raises TritonClientMissing, a one-line refusal that says how to install it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from faceharmony.core.diffusion.sealed_image import open_image
from faceharmony.core.keys.aead import triton_image_aad
from faceharmony.core.keys.errors import CiphertextInvalid, KeyShredded, KeysUnavailable
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.triton_streaming import DECOUPLED_MODELS, ThreadStreams, status_of
from faceharmony.loadtest.address import check_target
from faceharmony.loadtest.arrivals import Control, run_closed_loop
from faceharmony.loadtest.report import Outcome
from faceharmony.loadtest.seed import Manifest, SeededModel

PROMPTS = (
    "a portrait photo of sks person, studio lighting",
    "a close-up photo of sks person, natural light",
    "a headshot of sks person, soft shadows",
    "a photo of sks person in a park, golden hour",
)


def request_inputs(
    model: SeededModel,
    *,
    prompt: str,
    seed: int,
    steps: int,
    guidance: float,
    width: int,
    height: int,
) -> dict[str, Any]:
    """The row's inputs by name: (Triton datatype, value). Shared with the perf_analyzer input file."""
    return {
        "PROMPT": ("BYTES", prompt),
        "ADAPTER_BLOB_ID": ("BYTES", model.blob_id),
        "ADAPTER_KEY_ID": ("BYTES", model.key_id),
        "MODEL_VERSION_KEY": ("BYTES", model.model_version_key),
        "SEED": ("INT64", seed),
        "STEPS": ("INT32", steps),
        "GUIDANCE": ("FP32", guidance),
        "WIDTH": ("INT32", width),
        "HEIGHT": ("INT32", height),
    }


WARMUP_CONCURRENCY = 8
SETTLE_POLLS = 3  # equal execution counts in a row: Triton has recorded the step's executions
SETTLE_TIMEOUT_S = 10.0
_POLL_S = 0.1


class TritonClientMissing(ValueError):
    """tritonclient is not installed."""


def require_tritonclient() -> None:
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        raise TritonClientMissing(
            "tritonclient is not installed: install the triton extra (pip install 'faceharmony[triton]')"
        ) from None


def model_ready(url: str, model_name: str) -> bool:
    """Whether Triton at `url` answers and has `model_name` ready (checked before anything is seeded)."""
    require_tritonclient()
    import tritonclient.grpc as grpcclient

    try:
        with grpcclient.InferenceServerClient(url) as client:
            return bool(client.is_model_ready(model_name))
    except Exception:  # noqa: BLE001 - unreachable or refusing: not ready
        return False


def request_seed(run_seed: int, index: int) -> int:
    return (run_seed * 1_000_003 + index) % (2**63)


class TritonTarget:
    def __init__(
        self,
        url: str,
        model_name: str,
        manifest: Manifest,
        keyring: Keyring,
        *,
        width: int,
        height: int,
        steps: int,
        guidance: float = 7.5,
        timeout_s: float = 600.0,
        seed: int = 0,
        allow_remote_host: str | None = None,
        prompts: Sequence[str] = PROMPTS,
    ) -> None:
        self.url = check_target(url, allow_remote_host)
        self.model_name = model_name
        self.manifest = manifest
        self.keyring = keyring
        self.width, self.height, self.steps, self.guidance = width, height, steps, guidance
        self.timeout_s = timeout_s
        self.seed = seed
        self.prompts = tuple(prompts)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        # A decoupled model (per-step continuous batching) answers on a gRPC stream: one per thread.
        self.streaming = model_name in DECOUPLED_MODELS
        self._streams = ThreadStreams(self._client)

    # -- clients

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.grpc as grpcclient

            client = self._local.client = grpcclient.InferenceServerClient(self.url)
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        self._streams.drop()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    # -- one request

    def pick(self, index: int) -> tuple[SeededModel, str, int]:
        rng = np.random.default_rng([self.seed, index])
        model = self.manifest.models[int(rng.integers(len(self.manifest.models)))]
        return model, self.prompts[index % len(self.prompts)], request_seed(self.seed, index)

    def send(self, index: int) -> Outcome:
        model, prompt, seed = self.pick(index)
        return self.send_row(model, prompt, seed)

    def warm_up(self, first_index: int, control: Control, duration_s: float) -> list[Outcome]:
        """One request per model (indexes from `first_index`), WARMUP_CONCURRENCY at a time, none started after
        `duration_s`: every adapter is fetched into Triton's cache before anything is measured."""
        models = self.manifest.models

        def send(i: int) -> Outcome:
            index = first_index + i
            return self.send_row(models[i], self.prompts[index % len(self.prompts)], request_seed(self.seed, index))

        concurrency = min(WARMUP_CONCURRENCY, len(models))
        return run_closed_loop(send, concurrency, count=len(models), duration_s=duration_s, control=control).outcomes

    def send_row(self, model: SeededModel, prompt: str, seed: int) -> Outcome:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        inputs = []
        for name, (dtype, value) in request_inputs(
            model,
            prompt=prompt,
            seed=seed,
            steps=self.steps,
            guidance=self.guidance,
            width=self.width,
            height=self.height,
        ).items():
            np_type = {"BYTES": np.object_, "INT64": np.int64, "INT32": np.int32, "FP32": np.float32}[dtype]
            arr = np.array([[value.encode() if dtype == "BYTES" else value]], dtype=np_type)
            x = grpcclient.InferInput(name, list(arr.shape), dtype)
            x.set_data_from_numpy(arr)
            inputs.append(x)
        t0 = time.monotonic()
        try:
            outputs = [grpcclient.InferRequestedOutput("IMAGE_SEALED")]
            if self.streaming:
                result = self._streams.call(self.model_name, inputs, outputs, self.timeout_s)
            else:
                result = self._client().infer(self.model_name, inputs, outputs=outputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            return Outcome(ok=False, latency_s=time.monotonic() - t0, reason=_status_name(exc))
        latency = time.monotonic() - t0
        sealed = result.as_numpy("IMAGE_SEALED")
        if sealed is None or sealed.shape != (1, 1) or not isinstance(sealed[0, 0], bytes):
            return Outcome(ok=False, latency_s=latency, reason="BAD_RESPONSE")
        aad = triton_image_aad(model.blob_id, model.model_version_key, seed, model.key_id)
        try:
            pixels = open_image(self.keyring, model.key_id, sealed[0, 0], aad)
        except CiphertextInvalid:
            return Outcome(ok=False, latency_s=latency, reason="CIPHERTEXT_INVALID")
        except KeyShredded:
            return Outcome(ok=False, latency_s=latency, reason="KEY_SHREDDED")
        except KeysUnavailable:
            return Outcome(ok=False, latency_s=latency, reason="KEYS_UNAVAILABLE")
        if pixels.shape != (self.height, self.width, 3):
            return Outcome(ok=False, latency_s=latency, reason="WRONG_SIZE")
        return Outcome(ok=True, latency_s=latency, images=1, opened=1)


class TritonStatistics:
    """The model's entry of Triton's statistics API (`get_inference_statistics`, JSON), on a client of its own."""

    def __init__(self, url: str, model_name: str, *, allow_remote_host: str | None = None) -> None:
        import tritonclient.grpc as grpcclient

        self.url = check_target(url, allow_remote_host)
        self.model_name = model_name
        self._client = grpcclient.InferenceServerClient(self.url)

    def statistics(self) -> dict[str, Any]:
        """The model's entry, or `{"error": reason}` when Triton does not answer."""
        from tritonclient.utils import InferenceServerException

        try:
            stats = self._client.get_inference_statistics(self.model_name, as_json=True, client_timeout=10)
        except InferenceServerException as exc:
            return {"error": _status_name(exc)}
        except Exception as exc:  # noqa: BLE001 - a closed or broken client: the step records it
            return {"error": f"CLIENT_{type(exc).__name__}"}
        entries = stats.get("model_stats") or []
        return dict(entries[0]) if entries else {"error": "NO_STATISTICS"}

    def wait_statistics(
        self, before: dict[str, Any], succeeded: int, timeout_s: float = SETTLE_TIMEOUT_S
    ) -> tuple[dict[str, Any], bool]:
        """(statistics, settled): once Triton counted `succeeded` more successful requests than in `before` and
        its execution count held still for SETTLE_POLLS reads; unsettled after `timeout_s` (or an error)."""

        def counted(stats: dict[str, Any]) -> int:
            return int(((stats.get("inference_stats") or {}).get("success") or {}).get("count") or 0)

        deadline = time.monotonic() + timeout_s
        target = counted(before) + succeeded
        executions: list[int] = []
        while True:
            after = self.statistics()
            if "error" in after:
                return after, False
            executions.append(int(after.get("execution_count") or 0))
            still = len(executions) >= SETTLE_POLLS and len(set(executions[-SETTLE_POLLS:])) == 1
            if counted(after) >= target and still:
                return after, True
            if time.monotonic() > deadline:
                return after, False
            time.sleep(_POLL_S)

    def close(self) -> None:
        self._client.close()


def _status_name(exc: Exception) -> str:
    name = status_of(exc) if hasattr(exc, "message") else ""
    if not name:
        message = str(exc).lower()
        return "DEADLINE_EXCEEDED" if "deadline" in message or "timeout" in message else "UNAVAILABLE"
    return name
