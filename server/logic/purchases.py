"""Purchases and credits (P19): a purchase is recorded only as its store vouched for it, credits granted once per
store transaction; the balance is the sum of the credit ledger, which refunds and revocations debit (it may go
negative, and orders are then refused with INSUFFICIENT_CREDITS).

* App Store: the StoreKit 2 signed transaction, verified offline (core/stores/appstore.py); once per original
  transaction.
* Google Play: the purchase token, asked of the Play Developer API (core/stores/play.py), recorded under its keyed
  hash, then consumed. The store is asked before the transaction opens and consumed after it commits: a call
  that times out anywhere is retried with the same request and credits once (the record is found again, and the
  consumption finished).
* Refunds and revocations (App Store Server Notifications V2, Play's voided purchases): `apply_revocation`.
"""

from __future__ import annotations

import json
import logging

import grpc
import peewee as pw

from faceharmony.core import ids, metrics
from faceharmony.core.db import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.locks import key_lock, receipt_key
from faceharmony.core.db.models import Account, CreditEntry, Purchase, SpentReceipt
from faceharmony.core.stores import (
    APP_STORE,
    GOOGLE_PLAY,
    PurchasePending,
    ReceiptInvalid,
    Revocation,
    StorePurchase,
    StoreUnavailable,
)
from faceharmony.server.context import AppContext
from faceharmony.server.errors import ApiError, invalid, precondition
from faceharmony.server.logic.accounts import rate_limit
from faceharmony.server.logic.locking import locked
from faceharmony.server.validation import paginate

log = logging.getLogger(__name__)

STORES = {1: APP_STORE, 2: GOOGLE_PLAY}


def balance(account_id: str) -> int:
    total = CreditEntry.select(pw.fn.COALESCE(pw.fn.SUM(CreditEntry.delta), 0)).where(CreditEntry.account == account_id)
    return int(total.scalar())


def unavailable(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", message)


def _receipt_invalid(store: str, detail: str) -> ApiError:
    log.info("store receipt refused", extra={"store": store, "detail": detail})  # the fixed phrase, never the receipt
    return invalid("RECEIPT_INVALID", f"the store does not vouch for this purchase: {detail}")


def _ask(store: str, call):
    try:
        return call()
    except ReceiptInvalid as exc:
        raise _receipt_invalid(store, exc.detail) from None
    except PurchasePending:
        raise precondition("PURCHASE_PENDING", "the store has not been paid for this purchase yet") from None
    except StoreUnavailable as exc:
        log.warning("store unavailable", extra={"store": store, "detail": str(exc)})
        raise unavailable("the store could not be asked now; retry the same request") from None


def record_purchase(
    app: AppContext,
    account_id: str,
    store: int,
    product_id: str,
    signed_transaction: str,
    purchase_token: str,
    claimed_transaction_id: str = "",
):
    """Returns (purchase, balance). The same store transaction again, from the same account, returns the first
    record and grants nothing more."""
    name = STORES.get(store, "unknown")
    try:
        purchase, credits, fresh = _record_purchase(
            app, account_id, store, product_id, signed_transaction, purchase_token, claimed_transaction_id
        )
    except ApiError as exc:
        metrics.STORE_RECEIPTS.labels(name, exc.reason.lower()).inc()
        raise
    metrics.STORE_RECEIPTS.labels(name, "granted" if fresh else "replayed").inc()
    return purchase, credits


def _record_purchase(
    app: AppContext,
    account_id: str,
    store: int,
    product_id: str,
    signed_transaction: str,
    purchase_token: str,
    claimed_transaction_id: str,
):
    name = STORES.get(store)
    if name is None:
        raise invalid("INVALID_STORE", "store must be STORE_APP_STORE or STORE_GOOGLE_PLAY")
    stores = app.stores
    if (stores.app_store if name == APP_STORE else stores.play) is not None:
        # Each check may cost a call to the store (and its API quota): bounded per account, counted first.
        with write_transaction(app.db):
            rate_limit(app, "store:" + account_id, app.settings.store_checks_per_hour, 3600)
    if name == APP_STORE:
        if stores.app_store is None:
            raise precondition("STORE_NOT_CONFIGURED", "this server does not take App Store purchases")
        if not signed_transaction:
            raise _receipt_invalid(name, "signed_transaction is required")
        app_store = stores.app_store
        verified = _ask(name, lambda: app_store.verify_transaction(signed_transaction, app.clock.now()))
        if product_id and verified.product_id != product_id:
            raise _receipt_invalid(name, "another product's transaction")
        key = app.hasher.store_key(APP_STORE, verified.transaction_id)
    else:
        if stores.play is None:
            raise precondition("STORE_NOT_CONFIGURED", "this server does not take Google Play purchases")
        if not purchase_token:
            raise _receipt_invalid(name, "purchase_token is required")
        if product_id not in app.settings.products:
            raise invalid("UNKNOWN_PRODUCT", "no such product")
        play = stores.play
        key = app.hasher.store_key(GOOGLE_PLAY, purchase_token)
        verified = _ask(name, lambda: play.verify_token(product_id, purchase_token, key))
    each = app.settings.products.get(verified.product_id)
    if each is None:
        raise invalid("UNKNOWN_PRODUCT", "no such product")
    if claimed_transaction_id and claimed_transaction_id != verified.transaction_id:
        raise _receipt_invalid(name, "transaction_id is not the store's")
    if verified.account_token and verified.account_token != app.hasher.store_account(account_id):
        raise _receipt_invalid(name, "made for another account")
    purchase, fresh = _record(app, account_id, verified, each, key)
    if name == GOOGLE_PLAY and purchase.consumed_at is None and purchase.revoked_at is None:
        _consume(app, purchase, verified, purchase_token)
    return purchase, balance(account_id), fresh


def _record(app: AppContext, account_id: str, verified: StorePurchase, each: int, key: str) -> tuple[Purchase, bool]:
    """(the purchase, whether it was recorded now)."""
    for attempt in range(2):
        try:
            with write_transaction(app.db):
                key_lock(app.db, receipt_key(key))  # against a refund of it applied at the same time
                existing = Purchase.get_or_none(Purchase.key_hmac == key) or Purchase.get_or_none(
                    Purchase.store == verified.store, Purchase.transaction_id == verified.transaction_id
                )
                if existing is not None:
                    if existing.account_id != account_id:
                        raise precondition(
                            "TRANSACTION_ALREADY_RECORDED", "this purchase was recorded by another account"
                        )
                    if existing.key_hmac is None:  # recorded before receipts were verified: now it has its key
                        Purchase.update(key_hmac=key).where(Purchase.id == existing.id).execute()
                        existing.key_hmac = key
                        _adopt_spent(app, existing, key)
                    return existing, False
                if not verified.account_token and app.settings.store_require_account_token:
                    # New records only: a retry of one recorded before the setting was turned on is answered.
                    raise _receipt_invalid(verified.store, "not bound to an account (store_account_token)")
                spent = SpentReceipt.get_or_none(SpentReceipt.key_hmac == key)
                if spent is not None and spent.reason == "purged":
                    raise precondition("TRANSACTION_ALREADY_RECORDED", "this purchase was recorded by another account")
                if spent is not None and spent.reason != "reversed":
                    raise precondition("PURCHASE_REVOKED", "the store refunded or revoked this purchase")
                if verified.consumed:  # consumed, but not by this server: someone else's use of it
                    raise _receipt_invalid(verified.store, "already consumed")
                now = app.clock.now()
                credits = each * verified.quantity
                purchase = Purchase.create(
                    id=ids.new_id(),
                    account=account_id,
                    store=verified.store,
                    product_id=verified.product_id,
                    transaction_id=verified.transaction_id,
                    credits=credits,
                    created_at=now,
                    purchase_time=verified.purchase_time,
                    quantity=verified.quantity,
                    environment=verified.environment,
                    verified=json.dumps(verified.record, sort_keys=True),
                    key_hmac=key,
                    # A reversal that came before the record: an older refund delivered late changes nothing.
                    store_event_at=spent.at if spent is not None else None,
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
                    app.clock,
                    audit.PURCHASE_RECORDED,
                    actor_id=account_id,
                    subject_id=purchase.id,
                    credits=credits,
                    store=verified.store,
                )
                return purchase, True
        except pw.IntegrityError:
            if attempt:  # not the race the retry settles (that one reads the first record): a clash of ids
                raise precondition(
                    "TRANSACTION_ALREADY_RECORDED", "this purchase was recorded by another account"
                ) from None
    raise AssertionError("unreachable")


def _adopt_spent(app: AppContext, purchase: Purchase, key: str) -> None:
    """A row recorded before receipts were verified, given its key now: a refund or revocation of it that the
    store sent meanwhile (kept as a spent receipt: no row had the key) applies to it now, once."""
    spent = SpentReceipt.get_or_none(SpentReceipt.key_hmac == key)
    if spent is None or spent.reason == "purged":
        return
    if purchase.store_event_at is None or spent.at > purchase.store_event_at:
        _apply_to(app, purchase, reversed_=spent.reason == "reversed", reason=spent.reason, when=spent.at)
    SpentReceipt.delete().where(SpentReceipt.key_hmac == key).execute()  # the row holds its state from now on


def _consume(app: AppContext, purchase: Purchase, verified: StorePurchase, token: str) -> None:
    """Uses the Play token up (after the commit: a lost answer is finished by the next RecordPurchase of it)."""
    play = app.stores.play
    assert play is not None
    if not verified.consumed:
        try:
            play.consume(purchase.product_id, token)
        except (StoreUnavailable, ReceiptInvalid) as exc:
            # Refused as already consumed: a concurrent RecordPurchase of the same token consumed it first.
            try:
                done = play.verify_token(purchase.product_id, token, purchase.key_hmac or "").consumed
            except (StoreUnavailable, ReceiptInvalid, PurchasePending):
                done = False
            if not done:
                log.warning("play consume failed", extra={"purchase_id": purchase.id, "detail": str(exc)})
                raise unavailable(
                    "the purchase is recorded but Google Play could not be told; retry the same request"
                ) from None
    now = app.clock.now()
    Purchase.update(consumed_at=now).where(Purchase.id == purchase.id, Purchase.consumed_at.is_null()).execute()
    purchase.consumed_at = now


def apply_revocation(app: AppContext, revocation: Revocation) -> str:
    outcome = _apply_revocation(app, revocation)
    metrics.STORE_REVOCATIONS.labels(revocation.store, outcome).inc()
    return outcome


def _apply_revocation(app: AppContext, revocation: Revocation) -> str:
    value = revocation.transaction_id if revocation.store == APP_STORE else revocation.token
    if not value:
        return "unchanged"
    key = app.hasher.store_key(revocation.store, value)
    when = revocation.when
    with write_transaction(app.db):
        key_lock(app.db, receipt_key(key))  # one event of this transaction at a time, and none while it is recorded
        purchase = _find(revocation, key)
        if purchase is not None:
            # The account before the purchase row, as the account's purge takes them (retention/policies.py):
            # a purge running now is waited for, and then the purchase is gone with its account.
            account = locked(Account.select(Account.id).where(Account.id == purchase.account_id), app.db).first()
            purchase = _find(revocation, key) if account is not None else None
            if purchase is None:
                return "unchanged"  # purged meanwhile: its receipt is spent (retention/policies.spend_receipts)
        if purchase is None:
            spent = SpentReceipt.get_or_none(SpentReceipt.key_hmac == key)
            if spent is not None and (spent.reason == "purged" or spent.at >= when):
                return "unchanged"  # its account is gone, or this event is older than the one applied
            reason = "reversed" if revocation.reversed else revocation.reason[:32]
            if spent is None:
                SpentReceipt.create(key_hmac=key, store=revocation.store, at=when, reason=reason)
            else:
                SpentReceipt.update(at=when, reason=reason).where(SpentReceipt.key_hmac == key).execute()
            return "unknown"
        if purchase.store_event_at is not None and when <= purchase.store_event_at:
            return "unchanged"  # redelivered, or older than the event applied last
        changed = _apply_to(app, purchase, reversed_=revocation.reversed, reason=revocation.reason[:32], when=when)
    if not changed:
        return "unchanged"
    return "reinstated" if revocation.reversed else "revoked"


def _find(revocation: Revocation, key: str) -> Purchase | None:
    purchase = Purchase.get_or_none(Purchase.key_hmac == key)
    if purchase is None and revocation.transaction_id:  # recorded before receipts were verified (no key yet)
        purchase = Purchase.get_or_none(
            Purchase.store == revocation.store,
            Purchase.transaction_id == revocation.transaction_id,
            Purchase.key_hmac.is_null(),
        )
    return purchase


def _apply_to(app: AppContext, purchase: Purchase, *, reversed_: bool, reason: str, when) -> bool:
    """Revokes (or, `reversed_`, reinstates) `purchase` as of the store's time `when`; False if it already was."""
    if reversed_ == (purchase.revoked_at is None):  # already as this event leaves it
        Purchase.update(store_event_at=when).where(Purchase.id == purchase.id).execute()
        return False
    now = app.clock.now()
    if reversed_:
        change = {"revoked_at": None, "revoke_reason": None, "store_event_at": when}
        delta, kind, event = purchase.credits, "reinstated", audit.PURCHASE_REINSTATED
    else:
        change = {"revoked_at": now, "revoke_reason": reason, "store_event_at": when}
        delta, kind, event = -purchase.credits, "revocation", audit.PURCHASE_REVOKED
    Purchase.update(**change).where(Purchase.id == purchase.id).execute()
    for name, value in change.items():
        setattr(purchase, name, value)
    CreditEntry.create(
        id=ids.new_id(), account=purchase.account_id, delta=delta, kind=kind, ref_id=purchase.id, created_at=now
    )
    audit.record(app.clock, event, subject_id=purchase.id, credits=delta, reason=reason)
    return True


def key_legacy_purchases(app: AppContext) -> int:
    """Gives each App Store purchase recorded before receipts were verified (no key: migration 0011) the key of
    its transaction id, so that its account's purge spends it too (retention/policies.spend_receipts: the
    retention daemon holds no server secret to compute it) and a refund the store sent meanwhile applies.
    At every server start; a no-op once done. Google Play's old rows cannot be keyed (their token was never
    sent): a refund still finds them by order id. Returns how many it keyed."""
    keyed = 0
    legacy = Purchase.select(Purchase.id, Purchase.transaction_id).where(
        Purchase.store == APP_STORE, Purchase.key_hmac.is_null()
    )
    for purchase_id, transaction_id in list(legacy.tuples()):
        key = app.hasher.store_key(APP_STORE, transaction_id)
        try:
            with write_transaction(app.db):
                key_lock(app.db, receipt_key(key))
                row = Purchase.get_or_none(Purchase.id == purchase_id, Purchase.key_hmac.is_null())
                if row is None or Purchase.get_or_none(Purchase.key_hmac == key) is not None:
                    continue  # keyed meanwhile, gone, or its id's key already another's (it stays findable by id)
                Purchase.update(key_hmac=key).where(Purchase.id == purchase_id).execute()
                row.key_hmac = key
                _adopt_spent(app, row, key)
                keyed += 1
        except pw.IntegrityError:
            continue
    if keyed:
        log.info("keyed purchases recorded before receipts were verified", extra={"count": keyed})
    return keyed


def list_purchases(app: AppContext, account_id: str, page_size: int, page_token: str):
    query = Purchase.select().where(Purchase.account == account_id)
    return paginate(query, Purchase.created_at, Purchase.id, page_size, page_token)


def get_balance(app: AppContext, account_id: str) -> tuple[int, bool]:
    account = Account.get_by_id(account_id)
    return balance(account_id), bool(account.free_trial_granted)
