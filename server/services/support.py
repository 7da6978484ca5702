"""SupportService."""

from __future__ import annotations

from faceharmony.server import convert
from faceharmony.server.context import AppContext
from faceharmony.server.logic import support
from faceharmony.v1 import support_pb2 as pb
from faceharmony.v1 import support_pb2_grpc


class SupportService(support_pb2_grpc.SupportServiceServicer):
    def __init__(self, app: AppContext) -> None:
        self.app = app

    async def CreateTicket(self, request, context):
        row, msgs = await self.app.run(
            support.create_ticket,
            self.app,
            self.app.principal().account_id,
            request.subject,
            request.body,
            request.request_id,
        )
        return pb.CreateTicketResponse(ticket=convert.ticket(row, msgs))

    async def ListTickets(self, request, context):
        rows, token = await self.app.run(
            support.list_tickets,
            self.app,
            self.app.principal(),
            request.account_id,
            request.all_accounts,
            request.state,
            request.page_size,
            request.page_token,
        )
        return pb.ListTicketsResponse(tickets=[convert.ticket(r) for r in rows], next_page_token=token)

    async def GetTicket(self, request, context):
        row, msgs = await self.app.run(support.get_ticket, self.app, self.app.principal(), request.id)
        return pb.GetTicketResponse(ticket=convert.ticket(row, msgs))

    async def AddTicketMessage(self, request, context):
        row, msgs = await self.app.run(
            support.add_ticket_message, self.app, self.app.principal(), request.id, request.body
        )
        return pb.AddTicketMessageResponse(ticket=convert.ticket(row, msgs))

    async def ReplyToTicket(self, request, context):
        row, msgs = await self.app.run(
            support.reply_to_ticket, self.app, self.app.principal(), request.id, request.body, request.close
        )
        return pb.ReplyToTicketResponse(ticket=convert.ticket(row, msgs))
