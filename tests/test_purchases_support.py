"""Purchases and credits (P19), support tickets (P18): recorded per account, visible to their owner (and staff for tickets), idempotent, on both backends."""

from __future__ import annotations

import concurrent.futures

import grpc
import pytest

from faceharmony.core import ids
from faceharmony.core.db import models as m
from faceharmony.v1 import purchase_pb2 as p
from faceharmony.v1 import support_pb2 as s
from tests.support.harness import status_of


def record(h, user, tx, product="credits_10"):
    """The App Store purchase of original transaction `tx`, signed by the App Store the harness trusts (a new
    signature each time, as a device's retry after a lost answer would be)."""
    jws = h.app_store_transaction(transactionId=tx, originalTransactionId=tx, productId=product)
    return h.purchases.RecordPurchase(
        p.RecordPurchaseRequest(store=p.STORE_APP_STORE, signed_transaction=jws), metadata=user.md
    )


def test_purchase_grants_credits_once_per_transaction(harness):
    user = harness.sign_up("buyer@example.com")
    start = harness.purchases.GetBalance(p.GetBalanceRequest(), metadata=user.md).credits
    first = record(harness, user, "GPA.1234-5678")
    again = record(harness, user, "GPA.1234-5678")
    assert first.purchase.id == again.purchase.id
    assert first.balance == again.balance == start + 10
    record(harness, user, "GPA.1234-9999", product="credits_50")
    assert harness.purchases.GetBalance(p.GetBalanceRequest(), metadata=user.md).credits == start + 60
    listed = harness.purchases.ListPurchases(p.ListPurchasesRequest(), metadata=user.md).purchases
    assert sorted(x.transaction_id for x in listed) == ["GPA.1234-5678", "GPA.1234-9999"]
    assert {(x.state, x.environment, x.quantity) for x in listed} == {(p.PURCHASE_STATE_GRANTED, "Production", 1)}


def test_concurrent_duplicate_purchases_grant_once(harness):
    user = harness.sign_up("racer@example.com")
    start = harness.purchases.GetBalance(p.GetBalanceRequest(), metadata=user.md).credits
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: status_of(record, harness, user, "tx-race"), range(6)))
    assert all(code == grpc.StatusCode.OK for code, _ in results), results
    assert harness.purchases.GetBalance(p.GetBalanceRequest(), metadata=user.md).credits == start + 10
    assert harness.db_call(m.Purchase.select().count) == 1


def test_another_users_transaction_is_refused(harness):
    one, two = harness.sign_up("p1@example.com"), harness.sign_up("p2@example.com")
    record(harness, one, "tx-shared")
    assert status_of(record, harness, two, "tx-shared") == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TRANSACTION_ALREADY_RECORDED",
    )
    assert harness.purchases.ListPurchases(p.ListPurchasesRequest(), metadata=two.md).purchases == []


def test_products_are_listed(harness):
    user = harness.sign_up("shop@example.com")
    products = harness.purchases.ListProducts(p.ListProductsRequest(), metadata=user.md).products
    assert [(x.id, x.credits) for x in products] == [("credits_10", 10), ("credits_50", 50), ("credits_200", 200)]


def test_pagination_walks_every_purchase_once(harness):
    user = harness.sign_up("pager@example.com")
    for i in range(7):
        record(harness, user, f"tx-{i}")
        harness.clock.advance(seconds=1 if i % 2 else 0)
    seen, token = [], ""
    while True:
        page = harness.purchases.ListPurchases(p.ListPurchasesRequest(page_size=3, page_token=token), metadata=user.md)
        seen += [x.transaction_id for x in page.purchases]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == [f"tx-{i}" for i in range(7)] and len(seen) == 7
    for bad in ("garbage!", "eyJ4Ijp9", "x" * 300):
        got = status_of(
            h_list := harness.purchases.ListPurchases, p.ListPurchasesRequest(page_token=bad), metadata=user.md
        )
        assert got == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"), bad
    assert status_of(h_list, p.ListPurchasesRequest(page_size=-1), metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_SIZE",
    )


# --- support ---------------------------------------------------------------------------------


def test_ticket_life_cycle_between_user_and_staff(harness):
    user = harness.sign_up("help@example.com")
    ticket = harness.support.CreateTicket(
        s.CreateTicketRequest(subject="Refund", body="Please\nhelp", request_id="r-1"), metadata=user.md
    ).ticket
    assert ticket.state == s.TICKET_STATE_OPEN and ticket.messages[0].body == "Please\nhelp"
    same = harness.support.CreateTicket(
        s.CreateTicketRequest(subject="Refund", body="Please\nhelp", request_id="r-1"), metadata=user.md
    ).ticket
    assert same.id == ticket.id
    staff = harness.staff("support")
    everyone = harness.support.ListTickets(s.ListTicketsRequest(all_accounts=True), metadata=staff.md).tickets
    assert [t.id for t in everyone] == [ticket.id]
    replied = harness.support.ReplyToTicket(s.ReplyToTicketRequest(id=ticket.id, body="Done"), metadata=staff.md).ticket
    assert replied.state == s.TICKET_STATE_ANSWERED
    assert [x.author for x in replied.messages] == [s.TICKET_AUTHOR_USER, s.TICKET_AUTHOR_STAFF]
    mine = harness.support.GetTicket(s.GetTicketRequest(id=ticket.id), metadata=user.md).ticket
    assert [x.body for x in mine.messages] == ["Please\nhelp", "Done"]
    harness.support.AddTicketMessage(s.AddTicketMessageRequest(id=ticket.id, body="Thanks"), metadata=user.md)
    closed = harness.support.ReplyToTicket(
        s.ReplyToTicketRequest(id=ticket.id, body="Bye", close=True), metadata=staff.md
    ).ticket
    assert closed.state == s.TICKET_STATE_CLOSED
    assert status_of(
        harness.support.AddTicketMessage, s.AddTicketMessageRequest(id=ticket.id, body="?"), metadata=user.md
    ) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TICKET_CLOSED",
    )


def test_tickets_are_invisible_to_other_users(harness):
    owner, other = harness.sign_up("own@example.com"), harness.sign_up("other@example.com")
    ticket = harness.support.CreateTicket(
        s.CreateTicketRequest(subject="Mine", body="private"), metadata=owner.md
    ).ticket
    nf = (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert status_of(harness.support.GetTicket, s.GetTicketRequest(id=ticket.id), metadata=other.md) == nf
    assert (
        status_of(
            harness.support.AddTicketMessage, s.AddTicketMessageRequest(id=ticket.id, body="x"), metadata=other.md
        )
        == nf
    )
    assert status_of(harness.support.GetTicket, s.GetTicketRequest(id=ids.new_id()), metadata=owner.md) == nf
    assert harness.support.ListTickets(s.ListTicketsRequest(), metadata=other.md).tickets == []
    denied = (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert status_of(harness.support.ListTickets, s.ListTicketsRequest(all_accounts=True), metadata=other.md) == denied
    assert (
        status_of(harness.support.ListTickets, s.ListTicketsRequest(account_id=owner.account_id), metadata=other.md)
        == denied
    )
    assert (
        status_of(harness.support.ReplyToTicket, s.ReplyToTicketRequest(id=ticket.id, body="x"), metadata=owner.md)
        == denied
    )
    assert harness.db_call(m.TicketMessage.select().count) == 1


@pytest.mark.parametrize(
    "subject,body,reason",
    [
        ("", "b", "INVALID_SUBJECT"),
        ("s" * 201, "b", "INVALID_SUBJECT"),
        ("s", "", "INVALID_BODY"),
        ("s", "b" * 10_001, "INVALID_BODY"),
        ("s", "bad\x00", "INVALID_BODY"),
    ],
)
def test_bad_tickets_store_nothing(harness, subject, body, reason):
    h = harness
    user = h.sign_up("t@example.com")
    assert status_of(h.support.CreateTicket, s.CreateTicketRequest(subject=subject, body=body), metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )
    assert h.db_call(m.Ticket.select().count) == 0
    assert status_of(h.support.GetTicket, s.GetTicketRequest(id="../etc"), metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ID",
    )
