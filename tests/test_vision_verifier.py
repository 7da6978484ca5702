"""CloudVisionVerifier (P6, P8) with Google's real Vision client against a local fake Vision gRPC server on 127.0.0.1."""

from __future__ import annotations

import io
import socket
import threading
import time

import google.auth
import google.auth.exceptions
import grpc
import numpy as np
import pytest
from google.cloud import vision_v1
from PIL import Image

from faceharmony.core.verify.base import PreparedImage, Verdict, VerifierUnavailable
from faceharmony.core.verify.vision import CloudVisionVerifier
from tests.support.fake_vision import FakeVision, vision_client

FAST = {"timeout_seconds": 2.0, "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.05}


def _jpeg_image() -> PreparedImage:
    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=85)
    jpeg = buf.getvalue()
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    return PreparedImage(rgb=rgb, jpeg=jpeg)


IMAGE = _jpeg_image()


@pytest.fixture(autouse=True)
def no_google_credentials(monkeypatch):
    """Nothing here may look up real credentials (which could reach the metadata server or Google)."""

    def refuse(*args, **kwargs):
        raise google.auth.exceptions.DefaultCredentialsError("tests use no credentials")

    monkeypatch.setattr(google.auth, "default", refuse)


@pytest.fixture
def fake():
    with FakeVision() as server:
        yield server


@pytest.fixture
def make_verifier(fake):
    clients = []

    def make(address: str | None = None, **kwargs) -> CloudVisionVerifier:
        client = vision_client(address or fake.address)
        clients.append(client)
        return CloudVisionVerifier(client, **{**FAST, **kwargs})

    yield make
    for client in clients:
        client.transport.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- answers --------------------------------------------------------------------


@pytest.mark.parametrize("confidences", [[], [0.93], [0.93, 0.88], [0.9, 0.8, 0.7]])
def test_face_count(fake, make_verifier, confidences):
    fake.faces = confidences
    verdict = make_verifier().verify(IMAGE)
    assert isinstance(verdict, Verdict)
    assert verdict.faces == len(confidences)
    assert verdict.nsfw is False


def test_faint_faces_are_not_counted_but_reported(fake, make_verifier):
    fake.faces = [0.31, 0.912]
    verdict = make_verifier().verify(IMAGE)
    assert verdict.faces == 1
    assert verdict.detail["faces_detected"] == 2
    assert verdict.detail["face_scores"] == [0.91, 0.31]
    assert make_verifier(face_min_confidence=0.3).verify(IMAGE).faces == 2


def test_detail_holds_counts_scores_and_likelihood_names_only(fake, make_verifier):
    fake.faces = [0.987654]
    fake.safe_search = {"adult": "UNLIKELY", "violence": "POSSIBLE", "racy": "LIKELY", "medical": "VERY_LIKELY"}
    verdict = make_verifier().verify(IMAGE)
    assert verdict == Verdict(
        faces=1,
        nsfw=False,
        detail={
            "faces_detected": 1,
            "face_scores": [0.99],
            "adult": "UNLIKELY",
            "violence": "POSSIBLE",
            "racy": "LIKELY",
        },
    )


@pytest.mark.parametrize(
    "field, below, at",
    [
        ("adult", "POSSIBLE", "LIKELY"),
        ("violence", "POSSIBLE", "LIKELY"),
        ("racy", "LIKELY", "VERY_LIKELY"),
    ],
)
def test_safe_search_default_thresholds(fake, make_verifier, field, below, at):
    verifier = make_verifier()
    fake.safe_search = {field: below}
    assert verifier.verify(IMAGE).nsfw is False
    fake.safe_search = {field: at}
    assert verifier.verify(IMAGE).nsfw is True
    fake.safe_search = {field: "VERY_LIKELY"}
    assert verifier.verify(IMAGE).nsfw is True


def test_spoof_and_medical_are_ignored(fake, make_verifier):
    fake.safe_search = {"spoof": "VERY_LIKELY", "medical": "VERY_LIKELY"}
    assert make_verifier().verify(IMAGE).nsfw is False


def test_unknown_likelihoods_are_below_every_threshold(fake, make_verifier):
    fake.safe_search = {"adult": "UNKNOWN", "violence": "UNKNOWN", "racy": "UNKNOWN"}
    verdict = make_verifier().verify(IMAGE)
    assert verdict.nsfw is False and verdict.detail["adult"] == "UNKNOWN"


def test_thresholds_are_configurable(fake, make_verifier):
    fake.safe_search = {"adult": "POSSIBLE"}
    assert make_verifier(nsfw_threshold="POSSIBLE").verify(IMAGE).nsfw is True
    assert make_verifier(nsfw_threshold=vision_v1.Likelihood.VERY_LIKELY).verify(IMAGE).nsfw is False
    fake.safe_search = {"racy": "VERY_LIKELY"}
    assert make_verifier(racy_threshold=None).verify(IMAGE).nsfw is False
    fake.safe_search = {"racy": "LIKELY"}
    assert make_verifier(racy_threshold="LIKELY").verify(IMAGE).nsfw is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nsfw_threshold": "UNKNOWN"},
        {"nsfw_threshold": "MAYBE"},
        {"racy_threshold": 9},
        {"face_min_confidence": 1.5},
        {"max_attempts": 0},
        {"timeout_seconds": 0},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        CloudVisionVerifier(object(), **kwargs)


# -- what is sent ---------------------------------------------------------------------


def test_one_request_with_both_features_and_exactly_the_jpeg(fake, make_verifier):
    make_verifier().verify(IMAGE)
    assert fake.calls == 1
    (batch,) = fake.requests
    assert len(batch.requests) == 1
    (request,) = batch.requests
    assert request.image.content == IMAGE.jpeg
    assert not request.image.source.image_uri and not request.image.source.gcs_image_uri
    features = {f.type_: f for f in request.features}
    assert set(features) == {
        vision_v1.Feature.Type.FACE_DETECTION,
        vision_v1.Feature.Type.SAFE_SEARCH_DETECTION,
    }
    assert features[vision_v1.Feature.Type.FACE_DETECTION].max_results >= 3
    assert "image_context" not in request


# -- failures ---------------------------------------------------------------------


def test_per_image_error_is_unavailable_and_not_retried(fake, make_verifier):
    fake.image_error = (grpc.StatusCode.INVALID_ARGUMENT, "Bad image data at offset 12")
    with pytest.raises(VerifierUnavailable) as caught:
        make_verifier(max_attempts=3).verify(IMAGE)
    assert fake.calls == 1
    message = str(caught.value)
    assert "INVALID_ARGUMENT" in message and "Bad image data" not in message
    # neither chained nor carrying context: a logged traceback cannot show the service text
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_transient_per_image_error_is_retried(fake, make_verifier):
    fake.image_error = (grpc.StatusCode.UNAVAILABLE, "backend busy")
    with pytest.raises(VerifierUnavailable):
        make_verifier(max_attempts=3).verify(IMAGE)
    assert fake.calls == 3


def test_missing_safe_search_is_unavailable_not_safe(fake, make_verifier):
    fake.safe_search = None
    with pytest.raises(VerifierUnavailable, match="SafeSearch"):
        make_verifier(max_attempts=2).verify(IMAGE)
    assert fake.calls == 1


def test_unavailable_twice_then_ok(fake, make_verifier):
    fake.call_errors = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    verdict = make_verifier(max_attempts=3).verify(IMAGE)
    assert verdict.faces == 1
    assert fake.calls == 3


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL],
)
def test_other_retryable_codes_are_retried(fake, make_verifier, code):
    fake.call_errors = [code]
    assert make_verifier(max_attempts=2).verify(IMAGE).faces == 1
    assert fake.calls == 2


@pytest.mark.parametrize("attempts", [1, 3, 4])
def test_unavailable_forever_stops_after_max_attempts(fake, make_verifier, attempts):
    fake.fail_always = grpc.StatusCode.UNAVAILABLE
    started = time.monotonic()
    with pytest.raises(VerifierUnavailable) as caught:
        make_verifier(max_attempts=attempts).verify(IMAGE)
    assert fake.calls == attempts
    assert f"after {attempts} attempt" in str(caught.value) and "UNAVAILABLE" in str(caught.value)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNKNOWN,
    ],
)
def test_non_retryable_call_errors_fail_at_once(fake, make_verifier, code):
    fake.fail_always = code
    with pytest.raises(VerifierUnavailable, match=code.name):
        make_verifier(max_attempts=3).verify(IMAGE)
    assert fake.calls == 1


def test_default_backoff_is_short_and_growing(fake, make_verifier):
    fake.call_errors = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    started = time.monotonic()
    make_verifier(max_attempts=3, backoff_initial_seconds=0.1, backoff_max_seconds=0.15).verify(IMAGE)
    elapsed = time.monotonic() - started
    # jitter keeps each pause within [cap/2, cap]: 0.05..0.1 then 0.075..0.15
    assert 0.12 <= elapsed < 1.5


def test_slow_service_times_out_quickly(fake, make_verifier):
    fake.delay_seconds = 5.0
    started = time.monotonic()
    with pytest.raises(VerifierUnavailable, match="DEADLINE_EXCEEDED"):
        make_verifier(timeout_seconds=0.3, max_attempts=2).verify(IMAGE)
    elapsed = time.monotonic() - started
    assert fake.calls == 2
    assert 0.5 <= elapsed < 2.0


def test_total_deadline_bounds_all_attempts(fake, make_verifier):
    fake.delay_seconds = 5.0
    started = time.monotonic()
    with pytest.raises(VerifierUnavailable):
        make_verifier(timeout_seconds=0.3, max_attempts=10, total_timeout_seconds=0.5).verify(IMAGE)
    assert time.monotonic() - started < 1.5
    assert fake.calls <= 2


def test_nothing_listening(make_verifier):
    verifier = make_verifier(f"127.0.0.1:{_free_port()}", max_attempts=2, timeout_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(VerifierUnavailable, match="after 2 attempt"):
        verifier.verify(IMAGE)
    assert time.monotonic() - started < 3


def test_server_going_away_between_calls(fake, make_verifier):
    verifier = make_verifier(max_attempts=2, timeout_seconds=0.5)
    assert verifier.verify(IMAGE).faces == 1
    fake.stop()
    with pytest.raises(VerifierUnavailable):
        verifier.verify(IMAGE)


def test_default_client_without_credentials_is_unavailable():
    with pytest.raises(VerifierUnavailable, match="could not be created"):
        CloudVisionVerifier()


def test_concurrent_use(fake, make_verifier):
    fake.faces = [0.9, 0.8]
    verifier = make_verifier()
    results, errors = [], []

    def work():
        try:
            results.append(verifier.verify(IMAGE).faces)
        except Exception as exc:  # noqa: BLE001 - any failure in a thread is reported below  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and results == [2] * 8
    assert fake.calls == 8


def test_verifier_name():
    assert CloudVisionVerifier.name == "google-cloud-vision"
