"""OrderService (P14-P16). Generated photos are read with the API role (read-only on generated/) and only ever for their owner."""

from __future__ import annotations

import io
import logging

import grpc
from PIL import Image

from faceharmony.core.blobstore.base import BlobError, BlobNotFound, BlobStore
from faceharmony.core.jobs import styles
from faceharmony.core.jobs.orders import FINAL_STATES
from faceharmony.core.keys.errors import KeyShredded
from faceharmony.server import convert
from faceharmony.server.context import AppContext
from faceharmony.server.errors import ApiError, not_found
from faceharmony.server.logic import orders
from faceharmony.server.validation import state_filter
from faceharmony.server.watch import WatchHub, snapshot
from faceharmony.v1 import order_pb2 as pb
from faceharmony.v1 import order_pb2_grpc

log = logging.getLogger(__name__)
CHUNK_BYTES = 64 * 1024


class OrderService(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, app: AppContext, store: BlobStore, hub: WatchHub) -> None:
        self.app, self.store, self.hub = app, store, hub

    def _me(self) -> str:
        return self.app.principal().account_id

    async def _order(self, fn, *args) -> pb.Order:
        return await self.app.run(lambda: convert.orders([fn(self.app, *args)])[0])

    async def ListStyles(self, request, context):
        return pb.ListStylesResponse(
            styles=[pb.Style(id=s.id, display_name=s.display_name, description=s.description) for s in styles.STYLES]
        )

    async def CreateOrder(self, request, context):
        order = await self._order(
            orders.create_order,
            self._me(),
            list(request.model_ids),
            request.style_id,
            request.count,
            request.request_id,
        )
        return pb.CreateOrderResponse(order=order)

    async def GetOrder(self, request, context):
        return pb.GetOrderResponse(order=await self._order(orders.get_order, self._me(), request.id))

    async def ListOrders(self, request, context):
        me = self._me()

        def page():
            rows, token = orders.list_orders(self.app, me, request.page_size, request.page_token)
            return convert.orders(rows), token

        items, token = await self.app.run(page)
        return pb.ListOrdersResponse(orders=items, next_page_token=token)

    async def WatchOrder(self, request, context):
        principal = self.app.principal()
        me = principal.account_id

        def first_snapshot():
            row = orders.get_order(self.app, me, request.id)
            return snapshot(row, convert.orders([row])[0])

        first = await self.app.run(first_snapshot)
        async for snap in self.hub.watch(first, principal.session_id):  # ends when the session does
            if snap.message is None:
                raise not_found("order")  # purged with its account while watched
            yield pb.WatchOrderResponse(order=snap.message)
            if snap.state in FINAL_STATES:
                return

    async def ListGeneratedPhotos(self, request, context):
        me = self._me()
        state = state_filter(request.state, orders.PHOTO_STATES)

        def page():
            rows, token = orders.list_generated(
                self.app, me, request.order_id, state, request.page_size, request.page_token
            )
            return [convert.generated_photo(r) for r in rows], token

        items, token = await self.app.run(page)
        return pb.ListGeneratedPhotosResponse(generated_photos=items, next_page_token=token)

    async def _blob(self, blob_id: str, key_id: str) -> bytes:
        """The blob opened with the row's data key (a blob that does not open: CiphertextInvalid, DATA_LOSS)."""
        try:
            return await self.app.run(self.store.read, "generated", blob_id, key_id=key_id)
        except (BlobNotFound, KeyShredded):
            raise not_found("generated photo") from None  # purged between the row read and now
        except BlobError as exc:
            log.warning("generated photo read failed", extra={"error": type(exc).__name__})
            raise ApiError(
                grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "photo storage is unavailable; try again later"
            ) from None

    async def GetGeneratedPhotoPreview(self, request, context):
        row = await self.app.run(orders.get_generated, self.app, self._me(), request.id)
        jpeg = await self._blob(row.preview_blob_id, row.key_id)
        width, height = Image.open(io.BytesIO(jpeg)).size  # reads the header only
        return pb.GetGeneratedPhotoPreviewResponse(jpeg=jpeg, width=width, height=height)

    async def DownloadGeneratedPhoto(self, request, context):
        me = self._me()
        row = await self.app.run(orders.get_generated, self.app, me, request.id)
        data = await self._blob(row.blob_id, row.key_id)
        for offset in range(0, len(data), CHUNK_BYTES):
            chunk = data[offset : offset + CHUNK_BYTES]
            if offset == 0:
                yield pb.DownloadGeneratedPhotoResponse(data=chunk, content_type=row.content_type, total_size=len(data))
            else:
                yield pb.DownloadGeneratedPhotoResponse(data=chunk)
        # Every chunk was handed to the transport: the download is complete.
        await self.app.run(orders.mark_downloaded, self.app, me, row.id)

    async def RejectGeneratedPhoto(self, request, context):
        row = await self.app.run(orders.reject, self.app, self._me(), request.id)
        return pb.RejectGeneratedPhotoResponse(generated_photo=convert.generated_photo(row))

    async def DeleteGeneratedPhoto(self, request, context):
        await self.app.run(orders.delete, self.app, self._me(), request.id)
        return pb.DeleteGeneratedPhotoResponse()
