"""Support tickets (P18): users open and add to their own tickets; staff read any and reply.

A ticket and all its messages, staff replies included, are sealed with the key of the ticket's account."""

from __future__ import annotations

import peewee as pw

from faceharmony.core import ids
from faceharmony.core.db import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.models import Account, Ticket, TicketMessage, TicketState
from faceharmony.server.context import AppContext, Principal
from faceharmony.server.errors import denied, not_found, precondition
from faceharmony.server.logic.locking import locked
from faceharmony.server.validation import clean_text, optional_request_id, paginate, require_id, state_filter

TICKET_STATES = {1: TicketState.OPEN, 2: TicketState.ANSWERED, 3: TicketState.CLOSED}


def _subject(raw: str) -> str:
    return clean_text(raw, reason="INVALID_SUBJECT", what="subject", max_len=200, required=True, multiline=False)


def _body(raw: str) -> str:
    return clean_text(raw, reason="INVALID_BODY", what="body", max_len=10_000, required=True, multiline=True)


def _visible_ticket(app: AppContext, principal: Principal, ticket_id: str, for_update: bool = False) -> Ticket:
    require_id(ticket_id)
    query = Ticket.select().where(Ticket.id == ticket_id)
    if not principal.is_staff:
        query = query.where(Ticket.account == principal.account_id)
    ticket = (locked(query, app.db) if for_update else query).first()
    if ticket is None:
        raise not_found("ticket")
    return ticket


def messages(ticket: Ticket) -> list[TicketMessage]:
    return list(TicketMessage.select().where(TicketMessage.ticket == ticket.id).order_by(TicketMessage.seq))


def _add_message(ticket: Ticket, author: str, body: str, now, staff: str | None = None) -> None:
    """Appends a message; the caller holds the ticket's row lock (or SQLite's write lock)."""
    seq = TicketMessage.select().where(TicketMessage.ticket == ticket.id).count()
    TicketMessage.create(
        id=ids.new_id(),
        ticket=ticket,
        key_id=ticket.key_id,
        seq=seq,
        author=author,
        staff=staff,
        body=body,
        created_at=now,
    )


def create_ticket(app: AppContext, account_id: str, subject: str, body: str, request_id: str):
    subject, body, request_id = _subject(subject), _body(body), optional_request_id(request_id)
    for attempt in range(2):
        try:
            with write_transaction(app.db):
                if request_id:
                    existing = Ticket.get_or_none(Ticket.account == account_id, Ticket.request_id == request_id)
                    if existing is not None:
                        return existing, messages(existing)
                now = app.clock.now()
                ticket = Ticket.create(
                    id=ids.new_id(),
                    account=account_id,
                    key_id=Account.select(Account.key_id).where(Account.id == account_id).scalar(),
                    subject=subject,
                    request_id=request_id,
                    created_at=now,
                    updated_at=now,
                )
                _add_message(ticket, "user", body, now)
                return ticket, messages(ticket)
        except pw.IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def list_tickets(
    app: AppContext,
    principal: Principal,
    account_id: str,
    all_accounts: bool,
    state: int,
    page_size: int,
    page_token: str,
):
    query = Ticket.select()
    if account_id or all_accounts:
        if not principal.is_staff:
            raise denied("only staff may list other accounts' tickets")
        if account_id:
            query = query.where(Ticket.account == require_id(account_id, "account_id"))
    else:
        query = query.where(Ticket.account == principal.account_id)
    wanted = state_filter(state, TICKET_STATES)
    if wanted:
        query = query.where(Ticket.state == wanted)
    return paginate(query, Ticket.created_at, Ticket.id, page_size, page_token)


def get_ticket(app: AppContext, principal: Principal, ticket_id: str):
    ticket = _visible_ticket(app, principal, ticket_id)
    return ticket, messages(ticket)


def add_ticket_message(app: AppContext, principal: Principal, ticket_id: str, body: str):
    body = _body(body)
    with write_transaction(app.db):
        require_id(ticket_id)
        ticket = locked(
            Ticket.select().where(Ticket.id == ticket_id, Ticket.account == principal.account_id), app.db
        ).first()
        if ticket is None:
            raise not_found("ticket")
        if ticket.state == TicketState.CLOSED:
            raise precondition("TICKET_CLOSED", "the ticket is closed; open a new one")
        now = app.clock.now()
        _add_message(ticket, "user", body, now)
        Ticket.update(state=TicketState.OPEN, updated_at=now).where(Ticket.id == ticket.id).execute()
    ticket = Ticket.get_by_id(ticket_id)
    return ticket, messages(ticket)


def reply_to_ticket(app: AppContext, principal: Principal, ticket_id: str, body: str, close: bool):
    body = _body(body)
    with write_transaction(app.db):
        ticket = _visible_ticket(app, principal, ticket_id, for_update=True)
        now = app.clock.now()
        _add_message(ticket, "staff", body, now, staff=principal.account_id)
        Ticket.update(state=TicketState.CLOSED if close else TicketState.ANSWERED, updated_at=now).where(
            Ticket.id == ticket.id
        ).execute()
        audit.record(app.clock, audit.TICKET_REPLIED, actor_id=principal.account_id, subject_id=ticket.id)
    ticket = Ticket.get_by_id(ticket_id)
    return ticket, messages(ticket)
