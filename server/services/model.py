"""ModelService (P10-P13)."""

from __future__ import annotations

from faceharmony.core.db.models import ModelState
from faceharmony.server import convert
from faceharmony.server.context import AppContext
from faceharmony.server.errors import not_found
from faceharmony.server.logic import models
from faceharmony.server.watch import WatchHub, snapshot
from faceharmony.v1 import model_pb2 as pb
from faceharmony.v1 import model_pb2_grpc

FINAL = (ModelState.READY, ModelState.FAILED)
MESSAGES = {
    ModelState.QUEUED: "waiting for a trainer",
    ModelState.TRAINING: "training",
    ModelState.READY: "ready",
    ModelState.FAILED: "training failed",
}


def model_message(app: AppContext, row) -> pb.Model:
    return convert.models_with_photos([row])[0]


class ModelService(model_pb2_grpc.ModelServiceServicer):
    def __init__(self, app: AppContext, hub: WatchHub) -> None:
        self.app, self.hub = app, hub

    async def _reply(self, fn, *args):
        return await self.app.run(lambda: model_message(self.app, fn(self.app, *args)))

    async def CreateModel(self, request, context):
        me = self.app.principal().account_id
        msg = await self._reply(
            models.create_model, me, request.display_name, list(request.photo_ids), request.request_id
        )
        return pb.CreateModelResponse(model=msg)

    async def GetModel(self, request, context):
        return pb.GetModelResponse(
            model=await self._reply(models.get_model, self.app.principal().account_id, request.id)
        )

    async def ListModels(self, request, context):
        me = self.app.principal().account_id

        def page():
            rows, token = models.list_models(self.app, me, request.page_size, request.page_token)
            return convert.models_with_photos(rows), token

        items, token = await self.app.run(page)
        return pb.ListModelsResponse(models=items, next_page_token=token)

    async def WatchModel(self, request, context):
        principal = self.app.principal()
        me = principal.account_id

        def first_snapshot():
            row = models.get_model(self.app, me, request.id)
            return snapshot(row, convert.models_with_photos([row])[0])

        first = await self.app.run(first_snapshot)
        async for snap in self.hub.watch(first, principal.session_id):  # ends when the session does
            if snap.state not in models.VISIBLE:
                raise not_found("model")  # deleted while watched
            model = snap.message
            yield pb.WatchModelResponse(
                state=model.state, progress=model.progress, message=MESSAGES[snap.state], model=model
            )
            if snap.state in FINAL:
                return

    async def RetrainModel(self, request, context):
        msg = await self._reply(models.retrain_model, self.app.principal().account_id, request.id, request.request_id)
        return pb.RetrainModelResponse(model=msg)

    async def DeleteModel(self, request, context):
        msg = await self._reply(models.delete_model, self.app.principal().account_id, request.id)
        return pb.DeleteModelResponse(model=msg)
