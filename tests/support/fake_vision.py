"""A scriptable stand-in for Google Cloud Vision: a real gRPC server on 127.0.0.1 speaking ``google.cloud.vision.v1.ImageAnnotator/BatchAnnotateImages``.

Messages are (de)serialised with the proto-plus types of ``google-cloud-vision``
itself, so Google's real client talks to it unchanged over
``ImageAnnotatorGrpcTransport(channel=grpc.insecure_channel(fake.address))``
(see ``vision_client``).

Script it per test by setting attributes (all may be changed while running):

- ``faces``: detection confidences, one face each (default one face, 0.97);
- ``safe_search``: Likelihood (or name) per SafeSearch field (adult, spoof,
  medical, violence, racy); unset fields are VERY_UNLIKELY; ``safe_search=None``
  leaves the annotation out of the answer;
- ``image_error``: ``(grpc.StatusCode, message)`` put in ``responses[i].error``;
- ``call_errors``: a list of ``grpc.StatusCode`` consumed one per call (the call
  is aborted with that status); ``fail_always`` aborts every call with a status;
- ``delay_seconds``: how long each call waits before answering (cut short by stop()).

``requests`` holds every request received (also the aborted ones) and
``calls`` their count.
"""

from __future__ import annotations

import threading

import grpc
from google.cloud import vision_v1
from google.cloud.vision_v1.services.image_annotator.transports import ImageAnnotatorGrpcTransport

from tests.support.fake_grpc import serve_on_loopback

SERVICE = "google.cloud.vision.v1.ImageAnnotator"
SAFE_SEARCH_FIELDS = ("adult", "spoof", "medical", "violence", "racy")


def vision_client(address: str) -> vision_v1.ImageAnnotatorClient:
    """Google's real client, over plaintext gRPC to ``address`` (no credentials are looked up)."""
    transport = ImageAnnotatorGrpcTransport(channel=grpc.insecure_channel(address))
    return vision_v1.ImageAnnotatorClient(transport=transport)


class FakeVision:
    def __init__(self) -> None:
        self.faces: list[float] = [0.97]
        self.safe_search: dict | None = {}
        self.image_error: tuple[grpc.StatusCode, str] | None = None
        self.call_errors: list[grpc.StatusCode] = []
        self.fail_always: grpc.StatusCode | None = None
        self.delay_seconds: float = 0.0
        self.requests: list[vision_v1.BatchAnnotateImagesRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self.port: int | None = None

    # -- lifecycle ----------------------------------------------------------------

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeVision is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> FakeVision:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "BatchAnnotateImages": grpc.unary_unary_rpc_method_handler(
                    self._batch_annotate_images,
                    request_deserializer=vision_v1.BatchAnnotateImagesRequest.deserialize,
                    response_serializer=vision_v1.BatchAnnotateImagesResponse.serialize,
                )
            },
        )
        self._stopping.clear()
        self._server, self.port = serve_on_loopback(handler)
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes delayed handlers
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def __enter__(self) -> FakeVision:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the service ------------------------------------------------------------

    def _batch_annotate_images(self, request: vision_v1.BatchAnnotateImagesRequest, context: grpc.ServicerContext):
        with self._lock:
            self.requests.append(request)
            forced = self.call_errors.pop(0) if self.call_errors else self.fail_always
        if self.delay_seconds and self._stopping.wait(self.delay_seconds):
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake vision shutting down")
        if forced is not None:
            context.abort(forced, f"fake vision: scripted {forced.name}")
        return vision_v1.BatchAnnotateImagesResponse(responses=[self._answer(r) for r in request.requests])

    def _answer(self, _request: vision_v1.AnnotateImageRequest) -> vision_v1.AnnotateImageResponse:
        if self.image_error is not None:
            code, message = self.image_error
            return vision_v1.AnnotateImageResponse(error={"code": code.value[0], "message": message})
        response = vision_v1.AnnotateImageResponse(
            face_annotations=[vision_v1.FaceAnnotation(detection_confidence=c) for c in self.faces]
        )
        if self.safe_search is not None:
            levels = {f: vision_v1.Likelihood.VERY_UNLIKELY for f in SAFE_SEARCH_FIELDS}
            for field, value in self.safe_search.items():
                if field not in levels:
                    raise KeyError(f"not a SafeSearch field: {field}")
                levels[field] = vision_v1.Likelihood[value] if isinstance(value, str) else vision_v1.Likelihood(value)
            response.safe_search_annotation = vision_v1.SafeSearchAnnotation(**levels)
        return response
