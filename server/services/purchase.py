"""PurchaseService."""

from __future__ import annotations

from faceharmony.server import convert
from faceharmony.server.context import AppContext
from faceharmony.server.logic import purchases
from faceharmony.v1 import purchase_pb2 as pb
from faceharmony.v1 import purchase_pb2_grpc


class PurchaseService(purchase_pb2_grpc.PurchaseServiceServicer):
    def __init__(self, app: AppContext) -> None:
        self.app = app

    async def RecordPurchase(self, request, context):
        row, balance = await self.app.run(
            purchases.record_purchase,
            self.app,
            self.app.principal().account_id,
            request.store,
            request.product_id,
            request.signed_transaction,
            request.purchase_token,
            request.transaction_id,
        )
        return pb.RecordPurchaseResponse(purchase=convert.purchase(row), balance=balance)

    async def ListPurchases(self, request, context):
        rows, token = await self.app.run(
            purchases.list_purchases, self.app, self.app.principal().account_id, request.page_size, request.page_token
        )
        return pb.ListPurchasesResponse(purchases=[convert.purchase(r) for r in rows], next_page_token=token)

    async def GetBalance(self, request, context):
        account_id = self.app.principal().account_id
        credits, trial = await self.app.run(purchases.get_balance, self.app, account_id)
        return pb.GetBalanceResponse(
            credits=credits,
            free_trial_granted=trial,
            free_trial_credits=self.app.settings.free_trial_credits if trial else 0,
            store_account_token=self.app.hasher.store_account(account_id),
        )

    async def ListProducts(self, request, context):
        items = sorted(self.app.settings.products.items(), key=lambda kv: (kv[1], kv[0]))
        return pb.ListProductsResponse(products=[pb.Product(id=k, credits=v) for k, v in items])
