"""AccountService."""

from __future__ import annotations

from faceharmony.server import convert
from faceharmony.server.context import AppContext
from faceharmony.server.logic import accounts
from faceharmony.v1 import account_pb2 as pb
from faceharmony.v1 import account_pb2_grpc


class AccountService(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, app: AppContext, on_email) -> None:
        self.app, self.on_email = app, on_email

    async def JoinWaitlist(self, request, context):
        await self.app.run(
            accounts.join_waitlist, self.app, request.name, request.email, request.is_16_or_older, request.note
        )
        return pb.JoinWaitlistResponse()

    async def RequestSignInCode(self, request, context):
        ttl = await self.app.run(accounts.request_sign_in_code, self.app, request.email)
        self.on_email()
        return pb.RequestSignInCodeResponse(code_ttl_seconds=ttl)

    async def SignIn(self, request, context):
        result = await self.app.run(accounts.sign_in, self.app, request.email, request.code)
        return pb.SignInResponse(
            session_token=result.token,
            session_expire_time=convert.ts(result.expires_at),
            account=convert.account(result.account),
        )

    async def AcceptInvitation(self, request, context):
        result = await self.app.run(
            accounts.accept_invitation, self.app, request.invitation_token, request.is_16_or_older
        )
        return pb.AcceptInvitationResponse(
            session_token=result.token,
            session_expire_time=convert.ts(result.expires_at),
            account=convert.account(result.account),
        )

    async def SignOut(self, request, context):
        me = self.app.principal()
        await self.app.run(accounts.sign_out, self.app, me.account_id, me.session_id)
        return pb.SignOutResponse()

    async def GetAccount(self, request, context):
        row = await self.app.run(accounts.get_account, self.app, self.app.principal().account_id)
        return pb.GetAccountResponse(account=convert.account(row))

    async def UpdateName(self, request, context):
        row = await self.app.run(accounts.update_name, self.app, self.app.principal().account_id, request.name)
        return pb.UpdateNameResponse(account=convert.account(row))

    async def InviteFriend(self, request, context):
        await self.app.run(
            accounts.invite_friend, self.app, self.app.principal().account_id, request.email, request.name
        )
        self.on_email()
        return pb.InviteFriendResponse()

    async def DeleteAccount(self, request, context):
        row = await self.app.run(
            accounts.delete_account, self.app, self.app.principal().account_id, request.confirm_email
        )
        self.on_email()
        return pb.DeleteAccountResponse(account=convert.account(row))

    async def ReactivateAccount(self, request, context):
        row = await self.app.run(accounts.reactivate_account, self.app, self.app.principal().account_id)
        self.on_email()
        return pb.ReactivateAccountResponse(account=convert.account(row))
