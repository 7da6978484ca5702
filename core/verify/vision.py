"""The production upload verifier (P6, P8): Google Cloud Vision face detection + SafeSearch.

One ``BatchAnnotateImages`` call per upload, carrying only the stripped JPEG
that would be stored (``PreparedImage.jpeg``), with two features:
FACE_DETECTION (``max_results`` = 5, so that a second or third face is seen
and the upload rejected) and SAFE_SEARCH_DETECTION.

Decisions
---------
Faces
    A face counts when its ``detection_confidence`` >= ``face_min_confidence``
    (default 0.5). Fainter detections are reported in ``Verdict.detail`` but
    not counted.

NSFW
    Vision answers with likelihood buckets, not scores. An image is NSFW when
    ``adult >= nsfw_threshold`` or ``violence >= nsfw_threshold`` (default
    LIKELY, Google's own suggestion for filtering) or
    ``racy >= racy_threshold`` (default VERY_LIKELY). Racy gets the stricter
    bar on purpose: it fires on swimwear, bare shoulders, low necklines and
    kissing, which ordinary portraits often show, so LIKELY there would
    reject many innocent uploads. ``racy_threshold=None`` ignores racy.
    ``medical`` and ``spoof`` are not used. A SafeSearch annotation missing
    from the answer means no safety judgement was made: VerifierUnavailable
    (fail closed), never "safe". (A present annotation with UNKNOWN values
    ranks below every threshold, as Vision's own ordering says.)

Errors
    Every failure to obtain an answer raises ``VerifierUnavailable`` with a
    message naming only the status code and attempt count (no image data,
    no service-provided text; the original exception is not chained, so a
    logged traceback cannot leak it either). This includes a per-image
    error in the answer (``responses[0].error``): the image sent is always
    our own freshly re-encoded JPEG, so a Vision "bad image" (INVALID_ARGUMENT)
    means something unexpected on our side or theirs, not a user mistake we
    could name precisely; and ``Verdict`` has no "undecodable" outcome, while
    turning it into ``faces=0`` would give the user a false reason. The safe
    answer is UNAVAILABLE with nothing stored. A per-image error whose code is
    transient (see below) is retried like a failed call.

Retry
    The client's built-in retry (up to 600 s on UNAVAILABLE) is switched off
    (``retry=None`` on every call). Instead at most ``max_attempts`` calls
    (default 3), each with ``timeout_seconds`` (default 10), are made; only
    UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and INTERNAL are
    retried, after an exponential backoff with jitter (``backoff_initial_seconds``
    doubling, capped at ``backoff_max_seconds``). A total deadline bounds the
    whole verification: by default ``timeout_seconds * max_attempts`` plus the
    largest possible backoffs; each attempt's timeout is clipped to what is left.
"""

from __future__ import annotations

import random
import threading
import time

import grpc
from google.api_core import exceptions as api_exceptions
from google.cloud import vision_v1

from faceharmony.core.verify.base import PreparedImage, Verdict, VerifierUnavailable

Likelihood = vision_v1.Likelihood
LikelihoodLike = Likelihood | int | str

FACE_MAX_RESULTS = 5

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    }
)

# google.rpc.Code numbers (as found in responses[i].error.code) -> grpc.StatusCode.
_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _likelihood(value: LikelihoodLike, what: str) -> Likelihood:
    try:
        # proto-plus ships no types, so mypy does not see Likelihood as an Enum (indexable by name).
        level = Likelihood[value] if isinstance(value, str) else Likelihood(value)  # type: ignore[misc, valid-type]
    except (KeyError, ValueError):
        raise ValueError(f"{what}: not a Vision Likelihood: {value!r}") from None
    if level == Likelihood.UNKNOWN:
        raise ValueError(f"{what}: UNKNOWN is not a usable threshold")
    return level


class _Attempt(Exception):
    """Internal: one attempt failed; carries the status code and whether it may be retried."""

    def __init__(self, code: grpc.StatusCode | None, where: str):
        super().__init__(where)
        self.code = code
        self.where = where

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    def describe(self) -> str:
        name = self.code.name if self.code is not None else "no status"
        return f"{self.where} ({name})"


class CloudVisionVerifier:
    """Verifier backed by Google Cloud Vision (FACE_DETECTION + SAFE_SEARCH_DETECTION). Thread-safe."""

    name = "google-cloud-vision"

    def __init__(
        self,
        client: vision_v1.ImageAnnotatorClient | None = None,
        *,
        timeout_seconds: float = 10.0,
        max_attempts: int = 3,
        total_timeout_seconds: float | None = None,
        backoff_initial_seconds: float = 0.25,
        backoff_max_seconds: float = 2.0,
        nsfw_threshold: LikelihoodLike = Likelihood.LIKELY,
        racy_threshold: LikelihoodLike | None = Likelihood.VERY_LIKELY,
        face_min_confidence: float = 0.5,
    ):
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_initial_seconds < 0 or backoff_max_seconds < 0:
            raise ValueError("backoff must not be negative")
        if not 0.0 <= face_min_confidence <= 1.0:
            raise ValueError("face_min_confidence must be within [0, 1]")

        self.timeout_seconds = float(timeout_seconds)
        self.max_attempts = int(max_attempts)
        self.backoff_initial_seconds = float(backoff_initial_seconds)
        self.backoff_max_seconds = float(backoff_max_seconds)
        if total_timeout_seconds is None:
            total_timeout_seconds = self.timeout_seconds * self.max_attempts + sum(
                self._backoff_cap(i) for i in range(self.max_attempts - 1)
            )
        if total_timeout_seconds <= 0:
            raise ValueError("total_timeout_seconds must be positive")
        self.total_timeout_seconds = float(total_timeout_seconds)
        self.nsfw_threshold = _likelihood(nsfw_threshold, "nsfw_threshold")
        self.racy_threshold = None if racy_threshold is None else _likelihood(racy_threshold, "racy_threshold")
        self.face_min_confidence = float(face_min_confidence)

        self._owns_client = client is None
        if client is None:
            try:
                # Production: Application Default Credentials, the public endpoint.
                client = vision_v1.ImageAnnotatorClient()
            except Exception as exc:  # noqa: BLE001 - any failure means no client, e.g. google.auth DefaultCredentialsError
                raise VerifierUnavailable(f"Cloud Vision client could not be created ({type(exc).__name__})") from None
        self._client = client
        self._random = random.Random()
        self._random_lock = threading.Lock()

    # -- public -----------------------------------------------------------------

    def verify(self, image: PreparedImage) -> Verdict:
        request = self._request(image.jpeg)
        deadline = time.monotonic() + self.total_timeout_seconds
        last: _Attempt | None = None
        attempts = 0
        for attempt in range(self.max_attempts):
            if attempt:
                pause = self._backoff(attempt - 1)
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempts += 1
            try:
                response = self._call(request, min(self.timeout_seconds, remaining))
            except _Attempt as failure:
                last = failure
                if not failure.retryable:
                    break
                continue
            try:
                return self._verdict(response)
            except Exception as exc:  # noqa: BLE001 - an unreadable answer, e.g. a Likelihood value this library does not know
                raise VerifierUnavailable(f"Cloud Vision answer could not be read ({type(exc).__name__})") from None
        detail = last.describe() if last is not None else "no attempt fit in the deadline"
        raise VerifierUnavailable(f"Cloud Vision gave no answer after {attempts} attempt(s): {detail}")

    def close(self) -> None:
        """Closes the gRPC channel if this verifier created the client (a passed-in client is the caller's)."""
        if self._owns_client:
            self._client.transport.close()

    # -- internals ----------------------------------------------------------------

    def _request(self, jpeg: bytes) -> vision_v1.BatchAnnotateImagesRequest:
        return vision_v1.BatchAnnotateImagesRequest(
            requests=[
                vision_v1.AnnotateImageRequest(
                    image=vision_v1.Image(content=jpeg),
                    features=[
                        vision_v1.Feature(type_=vision_v1.Feature.Type.FACE_DETECTION, max_results=FACE_MAX_RESULTS),
                        vision_v1.Feature(type_=vision_v1.Feature.Type.SAFE_SEARCH_DETECTION),
                    ],
                )
            ]
        )

    def _call(self, request: vision_v1.BatchAnnotateImagesRequest, timeout: float) -> vision_v1.AnnotateImageResponse:
        try:
            # retry=None: the generated default retries UNAVAILABLE for up to 600 s.
            batch = self._client.batch_annotate_images(request=request, retry=None, timeout=timeout)
        except api_exceptions.GoogleAPICallError as exc:
            raise _Attempt(getattr(exc, "grpc_status_code", None), "call failed") from None
        except grpc.RpcError as exc:  # not normally reached: the client wraps these
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            raise _Attempt(code, "call failed") from None
        except Exception as exc:  # noqa: BLE001 - credentials refresh, transport bugs: no answer either way
            raise _Attempt(None, f"call failed: {type(exc).__name__}") from None

        if len(batch.responses) != 1:
            raise _Attempt(None, f"answer held {len(batch.responses)} responses for 1 image")
        response = batch.responses[0]
        if response.error.code != 0:
            raise _Attempt(_STATUS_BY_NUMBER.get(response.error.code), "Vision reported an error for the image")
        if "safe_search_annotation" not in response:
            raise _Attempt(None, "answer lacked SafeSearch")
        return response

    def _verdict(self, response: vision_v1.AnnotateImageResponse) -> Verdict:
        scores = sorted((float(f.detection_confidence) for f in response.face_annotations), reverse=True)
        faces = sum(1 for s in scores if s >= self.face_min_confidence)
        safe = response.safe_search_annotation
        adult, violence, racy = Likelihood(safe.adult), Likelihood(safe.violence), Likelihood(safe.racy)
        nsfw = adult >= self.nsfw_threshold or violence >= self.nsfw_threshold
        if self.racy_threshold is not None:
            nsfw = nsfw or racy >= self.racy_threshold
        return Verdict(
            faces=faces,
            nsfw=bool(nsfw),
            detail={
                "faces_detected": len(scores),
                "face_scores": [round(s, 2) for s in scores],
                "adult": adult.name,
                "violence": violence.name,
                "racy": racy.name,
            },
        )

    def _backoff_cap(self, retry_index: int) -> float:
        return min(self.backoff_initial_seconds * (2**retry_index), self.backoff_max_seconds)

    def _backoff(self, retry_index: int) -> float:
        with self._random_lock:
            jitter = self._random.uniform(0.5, 1.0)
        return self._backoff_cap(retry_index) * jitter
