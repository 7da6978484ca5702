"""Purchases and credits (P19): purchases recorded idempotently by (store, transaction id); the balance is the sum of the credit ledger.

The store receipt itself is not verified with Apple or Google here: that needs
the stores' servers, which this system cannot reach in tests (see README).
"""

from __future__ import annotations

import datetime as dt
import re

import peewee as pw

from faceharmony.core import ids
from faceharmony.core.db import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.models import Account, CreditEntry, Purchase
from faceharmony.server.context import AppContext
from faceharmony.server.errors import invalid, precondition
from faceharmony.server.validation import paginate

STORES = {1: "app_store", 2: "google_play"}
_TRANSACTION = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


def balance(account_id: str) -> int:
    total = CreditEntry.select(pw.fn.COALESCE(pw.fn.SUM(CreditEntry.delta), 0)).where(CreditEntry.account == account_id)
    return int(total.scalar())


def record_purchase(app: AppContext, account_id: str, store: int, product_id: str, transaction_id: str, purchase_time):
    """Returns (purchase, balance). The same (store, transaction) again returns the first record."""
    if store not in STORES:
        raise invalid("INVALID_STORE", "store must be STORE_APP_STORE or STORE_GOOGLE_PLAY")
    credits = app.settings.products.get(product_id)
    if credits is None:
        raise invalid("UNKNOWN_PRODUCT", "no such product")
    if not _TRANSACTION.fullmatch(transaction_id):
        raise invalid("INVALID_TRANSACTION_ID", "transaction_id must be 1-200 characters of [A-Za-z0-9._:-]")
    if purchase_time is not None and purchase_time > app.clock.now() + dt.timedelta(days=1):
        raise invalid("INVALID_REQUEST", "purchase_time is in the future")
    store_name = STORES[store]
    for attempt in range(2):
        try:
            with write_transaction(app.db):
                existing = Purchase.get_or_none(Purchase.store == store_name, Purchase.transaction_id == transaction_id)
                if existing is not None:
                    if existing.account_id != account_id or existing.product_id != product_id:
                        raise precondition("TRANSACTION_ALREADY_RECORDED", "this transaction was already recorded")
                    return existing, balance(account_id)
                now = app.clock.now()
                purchase = Purchase.create(
                    id=ids.new_id(),
                    account=account_id,
                    store=store_name,
                    product_id=product_id,
                    transaction_id=transaction_id,
                    credits=credits,
                    created_at=now,
                    purchase_time=purchase_time,
                )
                CreditEntry.create(
                    id=ids.new_id(),
                    account=account_id,
                    delta=credits,
                    kind="purchase",
                    ref_id=purchase.id,
                    created_at=now,
                )
                audit.record(
                    app.clock, audit.PURCHASE_RECORDED, actor_id=account_id, subject_id=purchase.id, credits=credits
                )
                return purchase, balance(account_id)
        except pw.IntegrityError:
            if attempt:  # a concurrent first record won the race: the retry reads it
                raise
    raise AssertionError("unreachable")


def list_purchases(app: AppContext, account_id: str, page_size: int, page_token: str):
    query = Purchase.select().where(Purchase.account == account_id)
    return paginate(query, Purchase.created_at, Purchase.id, page_size, page_token)


def get_balance(app: AppContext, account_id: str) -> tuple[int, bool]:
    account = Account.get_by_id(account_id)
    return balance(account_id), bool(account.free_trial_granted)
