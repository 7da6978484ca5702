"""Builds the configured verifier: the local offline detectors (default) or Google Cloud Vision."""

from __future__ import annotations

from faceharmony.core.settings import Settings
from faceharmony.core.verify.base import Verifier


def make_verifier(settings: Settings) -> Verifier:
    if settings.verifier == "google-cloud-vision":
        from google.cloud import vision_v1

        from faceharmony.core.verify.vision import CloudVisionVerifier

        client = None
        if settings.vision_endpoint:  # a local endpoint (tests, a proxy): plaintext gRPC
            import grpc
            from google.cloud.vision_v1.services.image_annotator.transports import ImageAnnotatorGrpcTransport

            channel = grpc.insecure_channel(settings.vision_endpoint)
            client = vision_v1.ImageAnnotatorClient(transport=ImageAnnotatorGrpcTransport(channel=channel))
        return CloudVisionVerifier(
            client=client,
            timeout_seconds=settings.vision_timeout_seconds,
            max_attempts=settings.vision_max_attempts,
            nsfw_threshold=vision_v1.Likelihood[settings.vision_nsfw_likelihood],  # type: ignore[misc]  # an Enum; proto-plus ships no types
            face_min_confidence=settings.vision_face_min_confidence,
        )
    from faceharmony.core.verify.local import LocalVerifier

    return LocalVerifier()
