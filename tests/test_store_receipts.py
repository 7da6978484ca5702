"""Store receipts (issue 17, P19): credits only for purchases the App Store or Google Play vouch for, once each;
refunds and revocations take them back; forged, replayed and other apps' receipts grant nothing, on both backends.

The App Store is a certificate authority of the tests' own that signs as Apple does, and Apple's own verifier
trusts its root; Google Play is a local server speaking the Play Developer API's REST protocol to Google's own
client (tests/support/stores.py)."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import socket
import urllib.error
import urllib.request
import uuid

import grpc
import pytest
from prometheus_client import REGISTRY

from faceharmony.core import ids
from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.db import models as m
from faceharmony.retention.daemon import Retention
from faceharmony.server.logic.purchases import key_legacy_purchases
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import purchase_pb2 as p
from tests.support.harness import start_harness, status_of
from tests.support.orders import balance, order, ready_model
from tests.support.stores import (
    APP_APPLE_ID,
    BUNDLE_ID,
    PACKAGE_NAME,
    LocalAppStore,
    LocalPlay,
    _cert,
    _name,
    app_store_settings,
    play_settings,
    shared_app_store,
)


@pytest.fixture
def play():
    server = LocalPlay()
    yield server
    server.close()


@pytest.fixture
def stores(database_url, tmp_path, play):
    """A server that takes both stores' purchases and App Store Server Notifications on a loopback port."""
    h = start_harness(
        tmp_path / "data",
        database_url,
        app_store_notifications_listen="127.0.0.1:0",
        **play_settings(play),
    )
    yield h
    h.stop()


def app_store(h, user, jws, product_id=""):
    request = p.RecordPurchaseRequest(store=p.STORE_APP_STORE, signed_transaction=jws, product_id=product_id)
    return h.purchases.RecordPurchase(request, metadata=user.md)


def google_play(h, user, token, product_id="credits_10"):
    request = p.RecordPurchaseRequest(store=p.STORE_GOOGLE_PLAY, purchase_token=token, product_id=product_id)
    return h.purchases.RecordPurchase(request, metadata=user.md)


def nothing_recorded(h) -> bool:
    purchases = h.db_call(m.Purchase.select().count)
    credits = h.db_call(m.CreditEntry.select().where(m.CreditEntry.kind != "trial").count)
    return purchases == 0 and credits == 0


def notify(h, signed_payload: str | None = None, *, body: bytes | None = None) -> tuple[int, dict]:
    port = h.api.app_store_notifications.port
    data = body if body is not None else json.dumps({"signedPayload": signed_payload}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/app-store/notifications/v2",
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def counted(name: str, store: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(f"faceharmony_{name}_total", {"store": store, "outcome": outcome}) or 0.0


def product_calls(play) -> list[str]:
    """The purchase calls the server made (not the voided purchases polls, which run on their own)."""
    return [verb for verb, _ in play.calls if verb != "voided"]


def ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


# --- App Store ---------------------------------------------------------------------------------


def test_an_app_store_purchase_is_credited_once_per_original_transaction_as_the_store_said(harness):
    h = harness
    user = h.sign_up("apple-buyer@example.com")
    start = balance(h, user)
    bought_at = h.clock.now() - dt.timedelta(minutes=2)
    fields = {"transactionId": "2000000111", "originalTransactionId": "2000000111", "productId": "credits_50"}
    first = app_store(h, user, h.app_store_transaction(quantity=2, purchaseDate=ms(bought_at), **fields))
    assert first.balance == start + 100 and first.purchase.credits == 100
    got = first.purchase
    assert (got.store, got.product_id, got.transaction_id, got.quantity) == (
        p.STORE_APP_STORE,
        "credits_50",
        "2000000111",
        2,
    )
    assert (got.state, got.environment) == (p.PURCHASE_STATE_GRANTED, "Production")
    assert got.purchase_time.ToDatetime(dt.UTC) == bought_at.replace(microsecond=bought_at.microsecond // 1000 * 1000)
    # The same transaction again, newly signed (a device's retry after a lost answer): the first record.
    h.clock.advance(seconds=30)
    again = app_store(h, user, h.app_store_transaction(quantity=2, **fields))
    assert again.purchase.id == got.id and again.balance == start + 100
    # What was verified is kept for support: the store's ids, product, bundle, environment and dates.
    row = h.db_call(m.Purchase.get_by_id, got.id)
    verified = json.loads(row.verified)
    assert verified["bundleId"] == BUNDLE_ID and verified["originalTransactionId"] == "2000000111"
    assert verified["type"] == "Consumable" and verified["quantity"] == 2
    events = h.db_call(lambda: list(m.AuditEvent.select().where(m.AuditEvent.kind == "PURCHASE_RECORDED")))
    assert [(e.actor_id, e.subject_id, e.details) for e in events] == [
        (user.account_id, got.id, {"credits": "100", "store": "app_store"})
    ]


FORGER = LocalAppStore()  # a root the server does not trust
NOT_A_RECEIPT_SIGNER = LocalAppStore(wrong_leaf_oid=True)


def _trusted_but_expired():
    """A chain to the trusted root whose leaf had expired when it signed."""
    store = shared_app_store()
    expired = LocalAppStore(expired=True)
    expired.root, expired.root_key = store.root, store.root_key
    expired.intermediate, expired.mid_key = store.intermediate, store.mid_key
    leaf_end = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    expired.leaf = _cert(
        _name("Expired StoreKit"),
        expired.leaf_key,
        store.intermediate.subject,
        store.mid_key,
        ca=False,
        oid="1.2.840.113635.100.6.11.1",
        not_before=leaf_end - dt.timedelta(days=365),
        not_after=leaf_end,
    )
    return expired


@pytest.mark.parametrize(
    "case",
    [
        "forged",
        "expired",
        "not-a-receipt-signer",
        "other-bundle",
        "sandbox",
        "xcode",
        "non-consumable",
        "revoked",
        "signed-in-the-future",
        "another-product-than-asked",
        "claimed-id-differs",
        "another-accounts-token",
        "tampered",
        "garbage",
        "empty",
        "huge",
        "unknown-product",
    ],
)
def test_bad_app_store_receipts_grant_nothing_and_leave_nothing(harness, case):
    h = harness
    user = h.sign_up(f"{case}@example.com")  # a new user, trying what a new user could
    start = balance(h, user)
    now = h.clock.now()
    product_id, claimed = "", ""
    jws = {
        "forged": lambda: FORGER.transaction(at=now),
        "expired": lambda: _trusted_but_expired().transaction(at=now),
        "not-a-receipt-signer": lambda: NOT_A_RECEIPT_SIGNER.transaction(at=now),
        "other-bundle": lambda: h.app_store_transaction(bundleId="com.example.other"),
        "sandbox": lambda: h.app_store_transaction(environment="Sandbox"),
        "xcode": lambda: h.app_store_transaction(environment="Xcode"),
        "non-consumable": lambda: h.app_store_transaction(type="Non-Consumable"),
        "revoked": lambda: h.app_store_transaction(revocationDate=ms(now), revocationReason=0),
        "signed-in-the-future": lambda: h.app_store_transaction(signedDate=ms(now + dt.timedelta(hours=1))),
        "another-product-than-asked": lambda: h.app_store_transaction(productId="credits_10"),
        "claimed-id-differs": lambda: h.app_store_transaction(),
        "another-accounts-token": lambda: h.app_store_transaction(appAccountToken=str(uuid.uuid4())),
        "tampered": lambda: _tamper(h.app_store_transaction()),
        "garbage": lambda: "eyJhbGciOiJFUzI1NiJ9.e30.c2ln",
        "empty": lambda: "",
        "huge": lambda: "a" * 20_000,
        "unknown-product": lambda: h.app_store_transaction(productId="free_money"),
    }[case]()
    if case == "another-product-than-asked":
        product_id = "credits_200"
    request = p.RecordPurchaseRequest(store=p.STORE_APP_STORE, signed_transaction=jws, product_id=product_id)
    if case == "claimed-id-differs":
        request.transaction_id = claimed = "1"
    reason = "UNKNOWN_PRODUCT" if case == "unknown-product" else "RECEIPT_INVALID"
    refused = counted("store_receipts", "app_store", reason.lower())
    assert status_of(h.purchases.RecordPurchase, request, metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )
    assert nothing_recorded(h) and balance(h, user) == start, claimed
    assert counted("store_receipts", "app_store", reason.lower()) == refused + 1


def _tamper(jws: str) -> str:
    """The payload changed (quantity 100) under the App Store's own signature."""
    import base64

    header, payload, signature = jws.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["quantity"] = 100
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_a_receipt_is_credited_to_the_account_that_bought_it_only(harness):
    h = harness
    buyer, other = h.sign_up("owner@example.com"), h.sign_up("thief@example.com")
    token = h.purchases.GetBalance(p.GetBalanceRequest(), metadata=buyer.md).store_account_token
    assert uuid.UUID(token).version == 4
    assert token == h.purchases.GetBalance(p.GetBalanceRequest(), metadata=buyer.md).store_account_token
    assert token != h.purchases.GetBalance(p.GetBalanceRequest(), metadata=other.md).store_account_token
    assert buyer.account_id not in token and buyer.account_id.lower() not in token.replace("-", "")
    jws = h.app_store_transaction(appAccountToken=token.upper())  # StoreKit's UUIDs are upper case
    start = balance(h, other)
    # Made for the buyer: another account presenting it gets nothing.
    assert status_of(app_store, h, other, jws) == (grpc.StatusCode.INVALID_ARGUMENT, "RECEIPT_INVALID")
    assert app_store(h, buyer, jws).purchase.credits == 10
    # A transaction without a token, replayed by another account after its buyer recorded it.
    plain = h.app_store_transaction()
    app_store(h, buyer, plain)
    assert status_of(app_store, h, other, plain) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TRANSACTION_ALREADY_RECORDED",
    )
    assert balance(h, other) == start
    assert h.purchases.ListPurchases(p.ListPurchasesRequest(), metadata=other.md).purchases == []


def test_sandbox_transactions_are_taken_where_configured(database_url, tmp_path):
    settings = app_store_settings(shared_app_store(), tmp_path / "roots", app_store_environments="Production,Sandbox")
    h = start_harness(tmp_path / "data", database_url, **settings)
    try:
        user = h.sign_up("reviewer@example.com")
        got = app_store(h, user, h.app_store_transaction(environment="Sandbox")).purchase
        assert got.environment == "Sandbox" and got.credits == 10
        assert status_of(app_store, h, user, h.app_store_transaction(environment="Xcode")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "RECEIPT_INVALID",
        )
    finally:
        h.stop()


def test_a_store_the_server_is_not_configured_for_is_refused(database_url, tmp_path):
    h = start_harness(tmp_path / "data", database_url, app_store_bundle_id="")
    try:
        user = h.sign_up("nostore@example.com")
        jws = shared_app_store().transaction(at=h.clock.now())
        assert status_of(app_store, h, user, jws) == (grpc.StatusCode.FAILED_PRECONDITION, "STORE_NOT_CONFIGURED")
        assert status_of(google_play, h, user, "token") == (grpc.StatusCode.FAILED_PRECONDITION, "STORE_NOT_CONFIGURED")
        bad = p.RecordPurchaseRequest(store=p.STORE_UNSPECIFIED, signed_transaction=jws)
        assert status_of(h.purchases.RecordPurchase, bad, metadata=user.md) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_STORE",
        )
        assert nothing_recorded(h) and h.api.app_store_notifications is None and h.api.play_voided is None
    finally:
        h.stop()


# --- App Store Server Notifications V2 ------------------------------------------------------------


def test_a_refund_notification_takes_the_credits_back_once_and_orders_are_refused(stores):
    h = stores
    user = h.sign_up("refunded@example.com")
    trial = balance(h, user)
    model = ready_model(h, user)
    jws = h.app_store_transaction(productId="credits_50")
    bought = app_store(h, user, jws).purchase
    while trial:  # the trial spent (at most order_max_count images an order); 50 left
        trial -= order(h, user, [model], count=min(trial, h.settings.order_max_count)).count
    assert balance(h, user) == 50
    assert h.api.app_store_notifications.port and h.api.app_store_notifications.listen.startswith("127.0.0.1:")
    refunded = h.app_store_transaction(
        transactionId=json.loads(h.db_call(m.Purchase.get_by_id, bought.id).verified)["transactionId"],
        originalTransactionId=bought.transaction_id,
        productId="credits_50",
        revocationDate=ms(h.clock.now()),
        revocationReason=1,
    )
    note = shared_app_store().notification("REFUND", refunded, at=h.clock.now())
    revoked = counted("store_revocations", "app_store", "revoked")
    assert notify(h, note) == (200, {"outcome": "revoked"})
    assert counted("store_revocations", "app_store", "revoked") == revoked + 1
    assert notify(h, note) == (200, {"outcome": "unchanged"})  # Apple retries; the credits go once
    assert balance(h, user) == 0
    listed = h.purchases.ListPurchases(p.ListPurchasesRequest(), metadata=user.md).purchases
    assert [(x.id, x.state) for x in listed] == [(bought.id, p.PURCHASE_STATE_REVOKED)] and listed[0].HasField(
        "revoke_time"
    )
    ledger = h.db_call(
        lambda: [(e.kind, e.delta, e.ref_id) for e in m.CreditEntry.select().where(m.CreditEntry.kind == "revocation")]
    )
    assert ledger == [("revocation", -50, bought.id)]
    events = h.db_call(lambda: list(m.AuditEvent.select().where(m.AuditEvent.kind == "PURCHASE_REVOKED")))
    assert [(e.actor_id, e.subject_id, e.details) for e in events] == [
        (None, bought.id, {"credits": "-50", "reason": "REFUND"})
    ]
    # Spent credits refunded: the balance goes negative, and the next order is refused with a clear reason.
    app_store(h, user, h.app_store_transaction(productId="credits_10"))
    spent = {"account": user.account_id, "delta": -20, "kind": "order", "created_at": h.clock.now()}
    h.db_call(lambda: m.CreditEntry.create(id=ids.new_id(), **spent))
    assert balance(h, user) == -10
    assert status_of(order, h, user, [model]) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")
    # The refund reversed (Apple signs it later): the credits stand again.
    h.clock.advance(minutes=1)
    reversed_note = shared_app_store().notification("REFUND_REVERSED", refunded, at=h.clock.now())
    assert notify(h, reversed_note) == (200, {"outcome": "reinstated"})
    assert balance(h, user) == 40
    states = {x.id: x.state for x in h.purchases.ListPurchases(p.ListPurchasesRequest(), metadata=user.md).purchases}
    assert states[bought.id] == p.PURCHASE_STATE_GRANTED


def test_a_refund_of_a_transaction_never_recorded_makes_its_receipt_worthless(stores):
    h = stores
    user = h.sign_up("early-refund@example.com")
    start = balance(h, user)
    payload = shared_app_store().transaction_payload(at=h.clock.now())
    jws = shared_app_store().sign(payload)
    revoked = shared_app_store().sign({**payload, "revocationDate": ms(h.clock.now()), "revocationReason": 0})
    assert notify(h, shared_app_store().notification("REVOKE", revoked, at=h.clock.now())) == (
        200,
        {"outcome": "unknown"},
    )
    # The old receipt, signed before the refund, presented afterwards.
    assert status_of(app_store, h, user, jws) == (grpc.StatusCode.FAILED_PRECONDITION, "PURCHASE_REVOKED")
    assert balance(h, user) == start and h.db_call(m.Purchase.select().count) == 0
    kept = h.db_call(lambda: list(m.SpentReceipt.select()))
    assert [(k.key_hmac, k.reason) for k in kept] == [
        (h.api.app.hasher.store_key("app_store", payload["originalTransactionId"]), "REVOKE")
    ]


def test_bad_notifications_change_nothing(stores):
    h = stores
    user = h.sign_up("notes@example.com")
    bought = h.buy(user)
    start = balance(h, user)
    tx = h.app_store_transaction(originalTransactionId=bought.purchase.transaction_id, revocationDate=ms(h.clock.now()))
    forged = FORGER.notification("REFUND", FORGER.transaction(at=h.clock.now()), at=h.clock.now())
    assert notify(h, forged)[0] == 400
    assert (
        notify(h, FORGER.notification("REFUND", tx, at=h.clock.now()))[0] == 400
    )  # a real transaction, forged envelope
    other_app = shared_app_store().notification("REFUND", tx, at=h.clock.now(), bundleId="com.example.other")
    assert notify(h, other_app)[0] == 400
    other_apple_id = shared_app_store().notification("REFUND", tx, at=h.clock.now(), appAppleId=APP_APPLE_ID + 1)
    assert notify(h, other_apple_id)[0] == 400
    assert notify(h, shared_app_store().notification("TEST", tx, at=h.clock.now())) == (200, {"outcome": "ignored"})
    assert notify(h, body=b"not json")[0] == 400
    assert notify(h, body=b"[]")[0] == 400
    assert notify(h, body=json.dumps({"signedPayload": "x" * 70_000}).encode())[0] in (400, 413)
    assert balance(h, user) == start and h.db_call(m.SpentReceipt.select().count) == 0


def test_concurrent_refund_notifications_debit_once(stores):
    h = stores
    user = h.sign_up("double-refund@example.com")
    bought = h.buy(user, "credits_50").purchase
    tx = h.app_store_transaction(originalTransactionId=bought.transaction_id, revocationDate=ms(h.clock.now()))
    notes = [shared_app_store().notification("REFUND", tx, at=h.clock.now()) for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda n: notify(h, n), notes))
    assert sorted(a[1]["outcome"] for a in answers) == ["revoked"] + ["unchanged"] * 5, answers
    assert h.db_call(m.CreditEntry.select().where(m.CreditEntry.kind == "revocation").count) == 1


# --- Google Play -----------------------------------------------------------------------------------


def test_a_play_purchase_is_credited_once_and_consumed(stores, play):
    h = stores
    user = h.sign_up("android@example.com")
    start = balance(h, user)
    account_token = h.purchases.GetBalance(p.GetBalanceRequest(), metadata=user.md).store_account_token
    token = play.add("credits_50", quantity=3, account_id=account_token)
    granted, replayed = (
        counted("store_receipts", "google_play", "granted"),
        counted("store_receipts", "google_play", "replayed"),
    )
    got = google_play(h, user, token, "credits_50")
    assert got.balance == start + 150
    assert (got.purchase.store, got.purchase.transaction_id) == (p.STORE_GOOGLE_PLAY, play.purchases[token].order_id)
    assert (got.purchase.quantity, got.purchase.environment) == (3, "Production")
    assert play.purchases[token].consumption_state == 1 and product_calls(play) == ["get", "consume"]
    # Asked again (a lost answer): the first record, not consumed twice, credited once.
    again = google_play(h, user, token, "credits_50")
    assert again.purchase.id == got.purchase.id and again.balance == start + 150
    assert product_calls(play) == ["get", "consume", "get"]
    assert counted("store_receipts", "google_play", "granted") == granted + 1
    assert counted("store_receipts", "google_play", "replayed") == replayed + 1
    # The token is kept only as a keyed hash.
    row = h.db_call(m.Purchase.get_by_id, got.purchase.id)
    assert row.key_hmac == h.api.app.hasher.store_key("google_play", token) and row.consumed_at is not None
    assert token not in json.dumps(row.__data__, default=str)


@pytest.mark.parametrize(
    "case,reason",
    [
        ("unknown-token", "RECEIPT_INVALID"),
        ("another-apps-token", "RECEIPT_INVALID"),
        ("another-product", "RECEIPT_INVALID"),
        ("reported-as-another-product", "RECEIPT_INVALID"),
        ("canceled", "RECEIPT_INVALID"),
        ("pending", "PURCHASE_PENDING"),
        ("license-tester", "RECEIPT_INVALID"),
        ("consumed-elsewhere", "RECEIPT_INVALID"),
        ("another-accounts-id", "RECEIPT_INVALID"),
        ("not-a-token", "RECEIPT_INVALID"),
        ("no-token", "RECEIPT_INVALID"),
        ("unknown-product", "UNKNOWN_PRODUCT"),
    ],
)
def test_bad_play_tokens_grant_nothing_and_leave_nothing(stores, play, case, reason):
    h = stores
    user = h.sign_up(f"play-{case}@example.com")
    start = balance(h, user)
    product = "credits_10"
    token = {
        "unknown-token": lambda: "abcdefghijklmnop.qrstuvwxyz-0123456789",
        "another-apps-token": lambda: play.add(package_name="com.example.other"),
        "another-product": lambda: play.add("credits_200"),
        "reported-as-another-product": lambda: play.add(reported_product="credits_200"),
        "canceled": lambda: play.add(purchase_state=1),
        "pending": lambda: play.add(purchase_state=2),
        "license-tester": lambda: play.add(purchase_type=0),
        "consumed-elsewhere": lambda: play.add(consumption_state=1),
        "another-accounts-id": lambda: play.add(account_id=str(uuid.uuid4())),
        "not-a-token": lambda: "../../etc/passwd",
        "no-token": lambda: "",
        "unknown-product": lambda: play.add("free_money"),
    }[case]()
    if case == "unknown-product":
        product = "free_money"
    code = {"PURCHASE_PENDING": grpc.StatusCode.FAILED_PRECONDITION}.get(reason, grpc.StatusCode.INVALID_ARGUMENT)
    assert status_of(google_play, h, user, token, product) == (code, reason)
    assert nothing_recorded(h) and balance(h, user) == start
    assert set(product_calls(play)) <= {"get"}  # nothing consumed


def test_license_testers_purchases_are_taken_where_configured(database_url, tmp_path, play):
    h = start_harness(tmp_path / "data", database_url, **play_settings(play, play_allow_test_purchases=True))
    try:
        user = h.sign_up("tester@example.com")
        assert google_play(h, user, play.add(purchase_type=0)).purchase.environment == "Test"
    finally:
        h.stop()


def test_google_play_unavailable_credits_nothing_and_a_retry_credits_once(stores, play):
    h = stores
    user = h.sign_up("flaky@example.com")
    start = balance(h, user)
    token = play.add()
    for status in (500, 503, 429, 401, "html", "truncated"):
        play.fail(status, on="get")
        assert status_of(google_play, h, user, token) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        assert nothing_recorded(h)
    play.stall_seconds = h.settings.play_timeout_seconds + 1  # the answer comes after the client's timeout
    assert status_of(google_play, h, user, token) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    play.stall_seconds = 0
    assert nothing_recorded(h)
    # Recorded, but the consume call fails: the credits stand (once), and the retry finishes the consumption.
    play.fail(503, on="consume")
    assert status_of(google_play, h, user, token) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert balance(h, user) == start + 10 and play.purchases[token].consumption_state == 0
    assert h.db_call(m.Purchase.get).consumed_at is None
    got = google_play(h, user, token)
    assert got.balance == start + 10 and play.purchases[token].consumption_state == 1
    assert h.db_call(m.Purchase.select().count) == 1 and h.db_call(m.Purchase.get).consumed_at is not None


def test_google_play_unreachable_is_unavailable(database_url, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    h = start_harness(
        tmp_path / "data", database_url, play_package_name=PACKAGE_NAME, play_api_endpoint=f"http://127.0.0.1:{port}/"
    )
    try:
        user = h.sign_up("offline@example.com")
        assert status_of(google_play, h, user, "abc.def") == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        assert nothing_recorded(h)
    finally:
        h.stop()


def test_concurrent_records_of_one_play_token_credit_once(stores, play):
    h = stores
    user = h.sign_up("play-race@example.com")
    start = balance(h, user)
    token = play.add()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda _: status_of(google_play, h, user, token), range(6)))
    assert all(code == grpc.StatusCode.OK for code, _ in got), got
    assert balance(h, user) == start + 10 and h.db_call(m.Purchase.select().count) == 1
    assert play.purchases[token].consumption_state == 1


def test_voided_play_purchases_take_the_credits_back_once(stores, play):
    h = stores
    user = h.sign_up("voided@example.com")
    start = balance(h, user)
    kept, refunded = play.add(), play.add("credits_50")
    google_play(h, user, kept)
    bought = google_play(h, user, refunded, "credits_50").purchase
    never_recorded = play.add()
    play.void(refunded, reason=7)  # a chargeback
    play.void(never_recorded)
    poller = h.api.play_voided
    assert h.call_in_loop(poller.poll()) == {"revoked": 1, "unknown": 1}
    assert h.call_in_loop(poller.poll()) == {"unchanged": 2}  # the next poll overlaps: each applied once
    assert balance(h, user) == start + 10
    states = {x.id: x.state for x in h.purchases.ListPurchases(p.ListPurchasesRequest(), metadata=user.md).purchases}
    assert states[bought.id] == p.PURCHASE_STATE_REVOKED and list(states.values()).count(p.PURCHASE_STATE_GRANTED) == 1
    assert h.db_call(m.Purchase.get_by_id, bought.id).revoke_reason == "chargeback"
    # The voided purchase that was never recorded grants nothing when it is presented.
    assert status_of(google_play, h, user, never_recorded) == (grpc.StatusCode.FAILED_PRECONDITION, "PURCHASE_REVOKED")
    assert balance(h, user) == start + 10
    play.fail(503, on="voided")
    with pytest.raises(Exception, match="HTTP 503"):
        h.call_in_loop(poller.poll())


def test_store_checks_are_bounded_per_account(database_url, tmp_path, play):
    h = start_harness(tmp_path / "data", database_url, store_checks_per_hour=2, **play_settings(play))
    try:
        user, other = h.sign_up("spammer@example.com"), h.sign_up("patient@example.com")
        for _ in range(2):
            assert status_of(google_play, h, user, "made.up.token")[1] == "RECEIPT_INVALID"
        asked = len(product_calls(play))
        assert status_of(google_play, h, user, play.add()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert status_of(app_store, h, user, h.app_store_transaction()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )
        assert len(product_calls(play)) == asked and nothing_recorded(h)  # Google was not asked again
        assert google_play(h, other, play.add()).purchase.credits == 10  # another account is not held back
        h.clock.advance(seconds=3601)
        assert app_store(h, user, h.app_store_transaction()).purchase.credits == 10
    finally:
        h.stop()


def test_purchases_refunds_and_their_traces_are_purged_with_the_account(stores, play):
    """P19: the purchases, their ledger entries, their audit events and the account's store rate-limit rows go
    with the account; a refund of a purchase never recorded (a keyed hash, no account) is all that stays."""
    h = stores
    user = h.sign_up("leaving@example.com")
    apple = h.buy(user).purchase
    google_token = play.add()
    google = google_play(h, user, google_token).purchase
    tx = h.app_store_transaction(originalTransactionId=apple.transaction_id, revocationDate=ms(h.clock.now()))
    assert notify(h, shared_app_store().notification("REFUND", tx, at=h.clock.now()))[1]["outcome"] == "revoked"
    stray = h.app_store_transaction(revocationDate=ms(h.clock.now()))
    assert notify(h, shared_app_store().notification("REFUND", stray, at=h.clock.now()))[1]["outcome"] == "unknown"
    ids_ = {apple.id, google.id}

    def traces():
        aid = user.account_id
        return {
            "purchases": m.Purchase.select().where(m.Purchase.account == aid).count(),
            "credits": m.CreditEntry.select().where(m.CreditEntry.account == aid).count(),
            "audit": m.AuditEvent.select().where(m.AuditEvent.subject_id.in_(ids_)).count(),
            "rate": m.RateLimitHit.select().where(m.RateLimitHit.key == "store:" + aid).count(),
        }

    assert all(h.db_call(traces).values())
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    h.clock.advance(days=h.settings.account_grace_days + 1)
    daemon = Retention(h.settings, h.db, LocalBlobStore(h.settings.blob_dir, Role.RETENTION), clock=h.clock)
    assert h.db_call(daemon.run_once)["accounts"] == 1
    assert h.db_call(traces) == {"purchases": 0, "credits": 0, "audit": 0, "rate": 0}
    # What stays names no account: the keyed hashes of the spent receipts, so that none credits a new account.
    spent = h.db_call(lambda: sorted(r.reason for r in m.SpentReceipt.select()))
    assert spent == ["REFUND", "purged", "purged"]
    newcomer = h.sign_up("newcomer@example.com")
    again = h.app_store_transaction(transactionId="9", originalTransactionId=apple.transaction_id)
    assert status_of(app_store, h, newcomer, again) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TRANSACTION_ALREADY_RECORDED",
    )
    assert status_of(google_play, h, newcomer, google_token) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TRANSACTION_ALREADY_RECORDED",
    )


def test_late_and_redelivered_notifications_change_nothing(stores):
    """Apple redelivers a notification until it gets a 200, and may deliver out of order: each purchase applies
    only events newer than the last it applied (by Apple's signing time)."""
    h = stores
    user = h.sign_up("replayed-notes@example.com")
    start = balance(h, user)
    bought = h.buy(user, "credits_50").purchase
    tx = h.app_store_transaction(originalTransactionId=bought.transaction_id, revocationDate=ms(h.clock.now()))
    refund = shared_app_store().notification("REFUND", tx, at=h.clock.now())
    h.clock.advance(minutes=5)
    reversal = shared_app_store().notification("REFUND_REVERSED", tx, at=h.clock.now())
    assert notify(h, refund)[1] == {"outcome": "revoked"} and balance(h, user) == start
    assert notify(h, reversal)[1] == {"outcome": "reinstated"} and balance(h, user) == start + 50
    assert notify(h, refund)[1] == {"outcome": "unchanged"}  # the refund redelivered after its reversal
    assert balance(h, user) == start + 50
    # Out of order: a reversal that arrives before its refund leaves the refund, when it comes, without effect.
    other = h.buy(user).purchase
    tx2 = h.app_store_transaction(originalTransactionId=other.transaction_id, revocationDate=ms(h.clock.now()))
    refund2 = shared_app_store().notification("REFUND", tx2, at=h.clock.now())
    h.clock.advance(minutes=5)
    reversal2 = shared_app_store().notification("REFUND_REVERSED", tx2, at=h.clock.now())
    assert notify(h, reversal2)[1] == {"outcome": "unchanged"}
    assert notify(h, refund2)[1] == {"outcome": "unchanged"} and balance(h, user) == start + 60
    # The same for a purchase never recorded: refunded, reversed, then the refund again.
    payload = shared_app_store().transaction_payload(at=h.clock.now())
    stray = shared_app_store().sign({**payload, "revocationDate": ms(h.clock.now())})
    first = shared_app_store().notification("REFUND", stray, at=h.clock.now())
    h.clock.advance(minutes=5)
    assert notify(h, first)[1] == {"outcome": "unknown"}
    assert notify(h, shared_app_store().notification("REFUND_REVERSED", stray, at=h.clock.now()))[1] == {
        "outcome": "unknown"
    }
    assert notify(h, first)[1] == {"outcome": "unchanged"}
    assert app_store(h, user, shared_app_store().sign(payload)).purchase.credits == 10  # the refund was undone
    # The record keeps the reversal's time: the first refund redelivered once more still changes nothing.
    assert notify(h, first)[1] == {"outcome": "unchanged"} and balance(h, user) == start + 70
    assert h.db_call(m.CreditEntry.select().where(m.CreditEntry.kind == "revocation").count) == 1


def test_rows_from_before_verification_are_keyed_at_start_refunded_by_id_and_spent_by_their_purge(stores, play):
    """Rows from before migration 0011 have the client's transaction id and no key. The server keys the App Store
    ones at start (the retention daemon, without the server secret, could not), so that their purge spends them;
    a Play refund finds its old row by order id, without a RecordPurchase of it first."""
    h = stores
    user = h.sign_up("legacy-keyed@example.com")
    signed_payload = shared_app_store().transaction_payload(at=h.clock.now())
    token = play.add()

    apple = h.db_call(lambda: legacy_row(h, user.account_id, "app_store", signed_payload["originalTransactionId"]))
    google = h.db_call(lambda: legacy_row(h, user.account_id, "google_play", play.purchases[token].order_id))
    # One refunded while no row had its key (kept by a version that did not look rows up by id): applied now.
    refunded_id = shared_app_store().transaction_payload(at=h.clock.now())["originalTransactionId"]
    refunded = h.db_call(lambda: legacy_row(h, user.account_id, "app_store", refunded_id))
    spent_key = h.api.app.hasher.store_key("app_store", refunded_id)
    h.db_call(lambda: m.SpentReceipt.create(key_hmac=spent_key, store="app_store", at=h.clock.now(), reason="REFUND"))
    start = balance(h, user)
    assert h.db_call(lambda: key_legacy_purchases(h.api.app)) == 2
    assert h.db_call(lambda: key_legacy_purchases(h.api.app)) == 0  # once
    assert balance(h, user) == start - 10 and h.db_call(lambda: m.Purchase.get_by_id(refunded).revoked_at) is not None
    assert h.db_call(m.SpentReceipt.select().count) == 0  # the row holds the refund now
    start = balance(h, user)
    keys = h.db_call(lambda: {r.id: r.key_hmac for r in m.Purchase.select()})
    assert keys[apple] == h.api.app.hasher.store_key("app_store", signed_payload["originalTransactionId"])
    assert keys[google] is None  # its token was never sent: nothing to key it by
    play.void(token)
    assert h.call_in_loop(h.api.play_voided.poll()) == {"revoked": 1}
    assert balance(h, user) == start - 10
    assert h.db_call(lambda: m.Purchase.get_by_id(google).revoked_at) is not None
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    h.clock.advance(days=h.settings.account_grace_days + 1)
    daemon = Retention(h.settings, h.db, LocalBlobStore(h.settings.blob_dir, Role.RETENTION), clock=h.clock)
    assert h.db_call(daemon.run_once)["accounts"] == 1
    newcomer = h.sign_up("legacy-newcomer@example.com")
    assert status_of(app_store, h, newcomer, shared_app_store().sign(signed_payload)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TRANSACTION_ALREADY_RECORDED",
    )


def test_notification_bodies_that_are_not_json_are_refused(stores):
    h = stores
    port = h.api.app_store_notifications.port
    for content_type, body in [
        ("application/json; charset=bogus", b"{}"),
        ("application/json", b"\xff\xfe"),
        ("application/json", b"[" * 100_00 + b"]" * 100_00),
        ("text/plain", b'{"signedPayload": 5}'),
    ]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/app-store/notifications/v2", data=body, headers={"Content-Type": content_type}
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code in (400, 413), (content_type, body[:10])


def test_receipts_must_carry_the_account_token_where_required(database_url, tmp_path, play):
    h = start_harness(tmp_path / "data", database_url, store_require_account_token=True, **play_settings(play))
    try:
        user = h.sign_up("bound@example.com")
        token = h.purchases.GetBalance(p.GetBalanceRequest(), metadata=user.md).store_account_token
        assert status_of(app_store, h, user, h.app_store_transaction()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "RECEIPT_INVALID",
        )
        assert status_of(google_play, h, user, play.add()) == (grpc.StatusCode.INVALID_ARGUMENT, "RECEIPT_INVALID")
        assert nothing_recorded(h)
        assert app_store(h, user, h.app_store_transaction(appAccountToken=token)).purchase.credits == 10
        assert google_play(h, user, play.add(account_id=token)).purchase.credits == 10
    finally:
        h.stop()


def test_requiring_the_account_token_leaves_earlier_records_answerable(database_url, tmp_path, play):
    """A purchase recorded without the token before the setting was turned on: its retry (a lost answer) gets
    the first record back, not RECEIPT_INVALID; a new one without the token is refused."""
    data = tmp_path / "data"
    h = start_harness(data, database_url, **play_settings(play))
    try:
        user = h.sign_up("bound-later@example.com")
        signed, token = h.app_store_transaction(), play.add()
        first = app_store(h, user, signed).purchase
        first_play = google_play(h, user, token).purchase
    finally:
        h.stop()
    h = start_harness(data, database_url, store_require_account_token=True, **play_settings(play))
    try:
        again = app_store(h, user, signed)
        assert again.purchase.id == first.id and google_play(h, user, token).purchase.id == first_play.id
        assert status_of(app_store, h, user, h.app_store_transaction()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "RECEIPT_INVALID",
        )
    finally:
        h.stop()


def legacy_row(h, account_id: str, store: str, transaction_id: str) -> str:
    """A purchase as recorded before migration 0011: the client's transaction id, 10 credits, no key."""
    now = h.clock.now()
    row = m.Purchase.create(
        id=ids.new_id(),
        account=account_id,
        store=store,
        product_id="credits_10",
        transaction_id=transaction_id,
        credits=10,
        created_at=now,
    )
    m.CreditEntry.create(id=ids.new_id(), account=account_id, delta=10, kind="purchase", ref_id=row.id, created_at=now)
    return row.id


def test_a_purchase_recorded_before_receipts_were_verified_is_found_again(stores, play):
    """A row from before migration 0011 (the client's transaction id, no key): the verified purchase with the same
    store id is that row, not a second grant, and a refund finds it."""
    h = stores
    user, other = h.sign_up("old-buyer@example.com"), h.sign_up("old-other@example.com")
    token = play.add()
    order_id = play.purchases[token].order_id

    old = h.db_call(lambda: legacy_row(h, user.account_id, "google_play", order_id))
    start = balance(h, user)
    assert status_of(google_play, h, other, token) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TRANSACTION_ALREADY_RECORDED",
    )
    got = google_play(h, user, token)
    assert got.purchase.id == old and got.balance == start and play.purchases[token].consumption_state == 1
    play.void(token)
    assert h.call_in_loop(h.api.play_voided.poll()) == {"revoked": 1}
    assert balance(h, user) == start - 10
