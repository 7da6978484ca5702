"""AdminService (staff only; the access rules live in admin.proto)."""

from __future__ import annotations

from faceharmony.server import convert
from faceharmony.server.context import AppContext
from faceharmony.server.logic import admin, models
from faceharmony.v1 import admin_pb2 as pb
from faceharmony.v1 import admin_pb2_grpc


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, app: AppContext, on_email) -> None:
        self.app, self.on_email = app, on_email

    async def ListWaitlist(self, request, context):
        rows, token = await self.app.run(
            admin.list_waitlist, self.app, request.state, request.page_size, request.page_token
        )
        return pb.ListWaitlistResponse(entries=[convert.waitlist_entry(r) for r in rows], next_page_token=token)

    async def ApproveWaitlistEntry(self, request, context):
        row = await self.app.run(admin.approve_waitlist_entry, self.app, self.app.principal().account_id, request.id)
        self.on_email()
        return pb.ApproveWaitlistEntryResponse(entry=convert.waitlist_entry(row))

    async def ListPendingDeletionModels(self, request, context):
        def page():
            rows, token = models.list_pending_deletion(
                self.app, request.account_id, request.page_size, request.page_token
            )
            return convert.models_with_photos(rows), token

        items, token = await self.app.run(page)
        return pb.ListPendingDeletionModelsResponse(models=items, next_page_token=token)

    async def RestoreModel(self, request, context):
        staff_id = self.app.principal().account_id

        def restore():
            return convert.models_with_photos([models.restore_model(self.app, staff_id, request.id)])[0]

        return pb.RestoreModelResponse(model=await self.app.run(restore))

    async def GetAuditLog(self, request, context):
        rows, token = await self.app.run(
            admin.get_audit_log,
            self.app,
            request.kind,
            request.actor_id,
            request.subject_id,
            request.page_size,
            request.page_token,
        )
        return pb.GetAuditLogResponse(events=[convert.audit_event(r) for r in rows], next_page_token=token)
