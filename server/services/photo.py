"""PhotoService: verified uploads (P6-P11). Decoding and verification run on their own thread pool behind a bounded queue and a budget of decoded pixels (server/verify_queue.py), database and blob work on the database pool."""

from __future__ import annotations

import asyncio
import logging

import grpc

from faceharmony.core import metrics
from faceharmony.core.blobstore.base import BlobError, BlobStore
from faceharmony.core.verify.base import PreparedImage, Verdict, Verifier, VerifierUnavailable
from faceharmony.core.verify.prepare import ImageRejected, Limits, declared_pixels, prepare_upload
from faceharmony.server import convert
from faceharmony.server.context import AppContext
from faceharmony.server.errors import ApiError, invalid
from faceharmony.server.logic import photos
from faceharmony.server.validation import optional_request_id
from faceharmony.server.verify_queue import VerifyQueue
from faceharmony.v1 import photo_pb2 as pb
from faceharmony.v1 import photo_pb2_grpc

log = logging.getLogger(__name__)


def _unavailable(reason: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, reason, message)


class PhotoService(photo_pb2_grpc.PhotoServiceServicer):
    def __init__(
        self,
        app: AppContext,
        store: BlobStore,
        verifier: Verifier,
        verify_queue: VerifyQueue,
    ) -> None:
        self.app, self.store, self.verifier, self.verify_queue = app, store, verifier, verify_queue
        s = app.settings
        self.limits = Limits(
            max_bytes=s.upload_max_bytes,
            max_pixels=s.upload_max_pixels,
            min_side=s.upload_min_side,
            store_max_side=s.upload_store_max_side,
        )

    def _check(self, content: bytes) -> tuple[PreparedImage, Verdict]:
        image = prepare_upload(content, self.limits)
        return image, self.verifier.verify(image)

    async def UploadPhoto(self, request, context):
        account_id = self.app.principal().account_id
        request_id = optional_request_id(request.request_id)
        if len(request.filename) > 255 or len(request.content_type) > 255:
            raise invalid("INVALID_REQUEST", "filename and content_type are at most 255 characters")
        first = await self.app.run(photos.existing_upload, self.app, account_id, request_id)
        if first is not None:
            return pb.UploadPhotoResponse(photo=convert.photo(first))
        await self.app.run(photos.check_quota, self.app, account_id)
        # Reserved before decoding, given back after; the header is read off the event loop (a PNG's text chunks
        # are inflated on the way to its pixel data).
        pixels = await asyncio.get_running_loop().run_in_executor(
            self.app.executor, declared_pixels, request.content, self.limits
        )
        try:
            image, verdict = await self.verify_queue.run(pixels, self._check, request.content)
        except ImageRejected as exc:
            metrics.UPLOAD_VERDICTS.labels(exc.reason).inc()
            raise invalid(exc.reason, exc.message) from None
        except VerifierUnavailable:
            metrics.UPLOAD_VERDICTS.labels("VERIFIER_UNAVAILABLE").inc()
            log.warning("verifier unavailable", extra={"verifier": self.verifier.name})
            raise _unavailable("VERIFIER_UNAVAILABLE", "photo verification is unavailable; try again later") from None
        refusal = photos.rejection_for(verdict)
        metrics.UPLOAD_VERDICTS.labels("accepted" if refusal is None else refusal.reason).inc()
        log.info(
            "photo verified",
            extra={
                "verifier": self.verifier.name,
                "faces": verdict.faces,
                "nsfw": verdict.nsfw,
                "accepted": refusal is None,
            },
        )
        if refusal is not None:
            raise refusal
        try:
            key_id = await self.app.run(self.store.keyring.new_key)  # the photo's own key: its purge shreds it
            blob_id = await self.app.run(self.store.create, "photos", image.jpeg, "image/jpeg", key_id=key_id)
        except BlobError as exc:
            log.warning("photo blob write failed", extra={"error": str(exc)})
            raise _unavailable("UNAVAILABLE", "photo storage is unavailable; try again later") from None
        row = await self.app.run(photos.record_upload, self.app, account_id, blob_id, key_id, image, request_id)
        return pb.UploadPhotoResponse(photo=convert.photo(row))

    async def ListPhotos(self, request, context):
        rows, token = await self.app.run(
            photos.list_photos, self.app, self.app.principal().account_id, request.page_size, request.page_token
        )
        return pb.ListPhotosResponse(photos=[convert.photo(r) for r in rows], next_page_token=token)

    async def DeletePhoto(self, request, context):
        await self.app.run(photos.delete_photo, self.app, self.app.principal().account_id, request.id)
        return pb.DeletePhotoResponse()
