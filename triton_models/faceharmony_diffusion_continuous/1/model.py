"""Triton Python-backend model `faceharmony_diffusion_continuous`: per-user LoRA images with per-step continuous
batching, in Triton's decoupled mode (the pattern of Triton's vLLM backend: requests are held across calls and
answered through their response senders).

The inputs, outputs, sealing, adapter cache, evictions, error codes and metrics are `faceharmony_diffusion`'s
(its model.py, loaded from the sibling folder of the real repository, is the base class: one implementation of
parsing, fetching and sealing). What differs:

* `execute(requests)` parses each request, applies its evictions, fetches its rows' adapters, and submits each
  row to the engine's step scheduler (`core.diffusion.continuous.ContinuousBatcher`, on a thread of its own);
  then it returns, so requests arriving while a denoising loop runs join it at its next step. No batching
  window: nothing waits for company.
* Each request gets exactly one response, marked final, when its last row is done: IMAGE_SEALED as the other
  model, or a `TritonError`. A bad request fails alone and at once; a row that fails inside the loop fails its
  request only.
* Cancellation is honoured at every step boundary: a request Triton reports cancelled (the client went away or
  cancelled its stream) leaves the loop and is answered CANCELLED; a row whose model version is evicted while it
  waits or runs (the model was deleted) leaves it too and is answered NOT_FOUND, as a generation that found no
  adapter is.
* Memory: the scheduler admits samples while `engine_max_pixels` (rows x pixels, all sizes) and
  `engine_max_batch` (per size) allow; what does not fit waits, in arrival order.
* Metrics: the step scheduler's samples running, rows waiting, steps, images, joins and cancellations as Triton
  custom metrics (`faceharmony_engine_*`, refreshed every half second), next to the adapter cache's.
* `finalize()`: stops the scheduler (what was left is answered STOPPED, UNAVAILABLE: the order worker retries it),
  then the base class's finalize.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def _load_request_level_model():
    """The request-level model's module (faceharmony_diffusion/1/model.py next to this model in the repository;
    through the launcher's repository view, whose entries are links to the real folders)."""
    name = "faceharmony_diffusion_request_level"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[2] / "faceharmony_diffusion" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_base = _load_request_level_model()
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# A streamed error reaches the client as its message only (gRPC streaming carries no status per response), so
# every message starts with its status in brackets, named as the unary call's gRPC status would be:
# "[NOT_FOUND] ...". The clients read it back (core/triton_streaming.py, status_of).
GRPC_NAMES = {"INVALID_ARG": "INVALID_ARGUMENT"}


def _error(message: str, code_name: str = "INVALID_ARG"):
    return _base._error(f"[{GRPC_NAMES.get(code_name, code_name)}] {message}", code_name)


class _Answer:
    """The rows of one Triton request on their way through the scheduler; sends its one response when the last
    row is done."""

    def __init__(self, model, request, pending) -> None:
        self.model, self.pending = model, pending
        self.sender = request.get_response_sender()
        self.request = request
        self.results: list = []
        self.left = 0
        self.lock = threading.Lock()
        self.sent = False
        self.keys: list[str] = []  # each row's cache key, and the evictions of it seen when it was submitted
        self.epochs: list[int] = []

    def send(self, response) -> None:
        with self.lock:
            if self.sent:
                return
            self.sent = True
        try:
            self.sender.send(response, flags=FINAL)
        except Exception as exc:  # noqa: BLE001 - a client gone away: nothing to answer to
            pb_utils.Logger.log_warn(f"response not sent: {type(exc).__name__}")

    def expect(self, rows: int) -> None:
        self.results, self.left = [None] * rows, rows

    def row_done(self, index: int, result) -> None:
        with self.lock:
            self.results[index] = result
            self.left -= 1
            last = self.left == 0
        if last:
            self.model._answer(self)


class _EngineMetrics(_base._Metrics):
    """The step scheduler's state as Triton custom metrics (`faceharmony_engine_*`, on Triton's metrics port),
    refreshed every REFRESH_S by a thread of the model: samples running and requests waiting (the memory budget
    holds the rest back), and counters of steps, images, cancelled requests and requests that joined a loop
    already running."""

    REFRESH_S = 0.5
    NAMES = {
        "running": ("faceharmony_engine_running_samples", "Samples in the running denoising loops", "GAUGE"),
        "waiting": ("faceharmony_engine_waiting_requests", "Rows waiting for room in a running loop", "GAUGE"),
        "steps": ("faceharmony_engine_steps_total", "UNet forwards of the step scheduler", "COUNTER"),
        "images": ("faceharmony_engine_images_total", "Images the step scheduler finished", "COUNTER"),
        "cancelled": (
            "faceharmony_engine_cancelled_total",
            "Rows that left a loop cancelled (client gone, model version evicted)",
            "COUNTER",
        ),
        "joined_running": (
            "faceharmony_engine_joined_running_total",
            "Rows admitted into a loop already running",
            "COUNTER",
        ),
    }

    def __init__(self, batcher) -> None:
        self.batcher = batcher
        super().__init__("faceharmony_diffusion_continuous")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="engine-metrics", daemon=True)
        self.thread.start()

    def values(self) -> dict[str, int]:
        stats = self.batcher.stats
        running, waiting = self.batcher.counts()
        return {
            "running": running,
            "waiting": waiting,
            "steps": stats.steps,
            "images": stats.images,
            "cancelled": stats.cancelled,
            "joined_running": stats.joined_running,
        }

    def _run(self) -> None:
        while not self.stop.wait(self.REFRESH_S):
            try:
                self.publish(self.values())
            except Exception as exc:  # noqa: BLE001 - metrics must never stop the model
                pb_utils.Logger.log_warn(f"engine metrics not updated: {type(exc).__name__}")


class TritonPythonModel(_base.TritonPythonModel):
    def initialize(self, args):
        import json

        from faceharmony.core.diffusion.continuous import ContinuousBatcher

        super().initialize(args)
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("faceharmony_diffusion_continuous must be decoupled (config.pbtxt)")
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        max_pixels = int(params.get("engine_max_pixels", "0") or 0)
        self.batcher = ContinuousBatcher(self.engine, max_pixels=max_pixels or None)
        self.batcher.start()
        try:
            self._engine_metrics: _EngineMetrics | None = _EngineMetrics(self.batcher)
        except Exception as exc:  # noqa: BLE001 - a Triton without custom metrics still serves
            self._engine_metrics = None
            pb_utils.Logger.log_warn(f"engine metrics unavailable: {type(exc).__name__}: {exc}")
        self._epochs: dict[str, int] = {}  # cache key -> evictions so far (a row is cancelled when it changes)
        self._epochs_lock = threading.Lock()
        pb_utils.Logger.log_info(
            f"faceharmony_diffusion_continuous ready: step scheduler with up to {self.batcher.max_batch} samples "
            f"per size and {self.batcher.max_pixels} rows x pixels"
        )

    def _epoch(self, key: str) -> int:
        with self._epochs_lock:
            return self._epochs.get(key, 0)

    def _evict(self, key: str) -> int:
        with self._epochs_lock:
            self._epochs[key] = self._epochs.get(key, 0) + 1
        return int(self.cache.evict(key))

    def execute(self, requests):
        for request in requests:
            try:
                self._start(request)
            except Exception as exc:  # noqa: BLE001 - one odd request must not fail the others
                sender = request.get_response_sender()
                sender.send(_error(f"bad request: {type(exc).__name__}", "INTERNAL"), flags=FINAL)
        return None

    def _start(self, request) -> None:
        pending = _base._Pending()
        answer = _Answer(self, request, pending)
        try:
            self._parse(request, pending)
            if len(pending.rows) > self.max_rows:
                raise _base._RequestError(f"at most {self.max_rows} rows per request")
        except _base._RequestError as exc:
            answer.send(_error(str(exc), exc.code_name))
            return
        except Exception as exc:  # noqa: BLE001 - as the request-level model: a bad request fails alone
            answer.send(_error(f"bad request: {type(exc).__name__}: {str(exc)[:200]}"))
            return
        for key in pending.evict_keys:
            pending.evicted += self._evict(key)
        if not pending.rows:  # eviction only
            rows = 1
            evicted = np.full((rows, 1), pending.evicted, dtype=np.int32)
            answer.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("EVICTED", evicted)]))
            return
        try:
            self._fetch_adapters(pending)
        except _base._RequestError as exc:
            answer.send(_error(str(exc), exc.code_name))
            return
        except Exception as exc:  # noqa: BLE001
            answer.send(_error(f"adapter fetch failed: {type(exc).__name__}", "INTERNAL"))
            return
        answer.expect(len(pending.rows))
        answer.keys = [key for (_blob, _key_id, key) in pending.adapter_refs]
        answer.epochs = [self._epoch(key) for key in answer.keys]
        for i, row in enumerate(pending.rows):
            key, epoch = answer.keys[i], answer.epochs[i]

            def cancelled(key=key, epoch=epoch) -> bool:
                return request.is_cancelled() or self._epoch(key) != epoch

            self.batcher.submit(row, lambda result, i=i: answer.row_done(i, result), cancelled=cancelled)

    def _answer(self, answer: _Answer) -> None:
        """Every row of a request is done: its one response."""
        from faceharmony.core.diffusion.continuous import CANCELLED, STOPPED

        pending, results = answer.pending, answer.results
        failed = [(i, r.error) for i, r in enumerate(results) if not r.ok]
        if failed:
            i, message = failed[0]
            if message == CANCELLED:
                if any(self._epoch(k) != e for k, e in zip(answer.keys, answer.epochs)):
                    answer.send(_error("model version evicted (deleted) while generating", "NOT_FOUND"))
                else:
                    answer.send(_error("cancelled", "CANCELLED"))
                return
            if message == STOPPED:
                answer.send(_error("model stopping", "UNAVAILABLE"))
                return
            prefix = f"row {i}: " if len(results) > 1 else ""
            answer.send(_error(prefix + message))
            return
        try:
            sealed = self._sealed_images(pending, [r.image for r in results])
        except _base._RequestError as exc:
            answer.send(_error(str(exc), exc.code_name))
            return
        except Exception as exc:  # noqa: BLE001 - one request's keys must not fail the others
            answer.send(_error(f"image sealing failed: {type(exc).__name__}", "INTERNAL"))
            return
        outputs = [pb_utils.Tensor("IMAGE_SEALED", sealed)]
        if pending.evict_keys:
            outputs.append(pb_utils.Tensor("EVICTED", np.full((len(results), 1), pending.evicted, dtype=np.int32)))
        answer.send(pb_utils.InferenceResponse(output_tensors=outputs))
        try:
            if self._metrics is not None:
                self._metrics.update()
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a request that was served
            pb_utils.Logger.log_warn(f"adapter cache metrics not updated: {type(exc).__name__}")

    def finalize(self):
        engine_metrics = getattr(self, "_engine_metrics", None)
        if engine_metrics is not None:
            engine_metrics.stop.set()
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.stop()
        super().finalize()
