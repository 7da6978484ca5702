"""gRPC streaming to Triton's decoupled models, shared by the order worker and the load tester (core: loadtest/ may
import no process package).

A decoupled model (config.pbtxt `model_transaction_policy { decoupled: true }`, e.g.
faceharmony_diffusion_continuous) answers on a bidirectional stream, not a unary call. `ThreadStreams` keeps one
stream per thread and sends one request at a time on it, so a call is as blocking as `infer` is: `call(...)`
returns the request's one final response or raises tritonclient's InferenceServerException. A timeout, or a
stream that broke (the server went away), closes that thread's stream with its request cancelled (the model
takes it out of its loop at the next step), and the next call opens a new one.

gRPC streaming carries no status per response, so our decoupled model puts the status in front of an error's
message ("[NOT_FOUND] ..."); `status_of(exc)` reads either.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable
from typing import Any

DECOUPLED_MODELS = frozenset({"faceharmony_diffusion_continuous"})
_STREAMED_STATUS = re.compile(r"^\[([A-Z_]+)\] ")
# What the client reports when the stream itself failed (not one request's answer).
_BROKEN = ("UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN")


def streamed_status(message: str | None) -> str:
    """The status a decoupled model put in front of a streamed error's message ("[NOT_FOUND] ..."), else ""."""
    found = _STREAMED_STATUS.match(message or "")
    return found.group(1) if found else ""


def status_of(exc: Any) -> str:
    """An InferenceServerException's gRPC status name (NOT_FOUND, ...): its status, else the streamed one."""
    status = str(exc.status() or "").rsplit(".", 1)[-1].upper()
    return status or streamed_status(exc.message())


class _Stream:
    def __init__(self, client) -> None:
        self.client = client
        self.answers: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.answers.put((result, error)))

    def close(self) -> None:
        try:
            self.client.stop_stream(cancel_requests=True)
        except Exception:  # noqa: BLE001 - a stream already broken has nothing left to stop
            pass


class ThreadStreams:
    """One stream per thread over `client()` (the caller's thread-local gRPC client)."""

    def __init__(self, client: Callable[[], Any]) -> None:
        self._client = client
        self._local = threading.local()

    def call(self, model: str, inputs, outputs, timeout: float):
        from tritonclient.utils import InferenceServerException

        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = _Stream(self._client())
        try:
            stream.client.async_stream_infer(model, inputs, outputs=outputs, enable_empty_final_response=False)
            result, error = stream.answers.get(timeout=timeout)
        except queue.Empty:
            self.drop()
            raise InferenceServerException("stream request timed out", status="StatusCode.DEADLINE_EXCEEDED") from None
        except BaseException:
            self.drop()
            raise
        if error is not None:
            if not streamed_status(error.message()) and str(error.status() or "").endswith(_BROKEN):
                self.drop()  # the stream itself broke: a new one next time
            raise error
        return result

    def drop(self) -> None:
        """Close this thread's stream (its request, if any, is cancelled)."""
        stream = getattr(self._local, "stream", None)
        self._local.stream = None
        if stream is not None:
            stream.close()
