"""Staff operations: the waiting list and the audit log."""

from __future__ import annotations

from faceharmony.core.db import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.models import Account, AuditEvent, WaitlistEntry, WaitlistState
from faceharmony.core.email.queue import enqueue
from faceharmony.server.context import AppContext
from faceharmony.server.errors import not_found, precondition
from faceharmony.server.logic.locking import locked
from faceharmony.server.validation import clean_text, paginate, require_id, state_filter

WAITLIST_STATES = {1: WaitlistState.PENDING, 2: WaitlistState.APPROVED}


def list_waitlist(app: AppContext, state: int, page_size: int, page_token: str):
    query = WaitlistEntry.select()
    wanted = state_filter(state, WAITLIST_STATES)
    if wanted:
        query = query.where(WaitlistEntry.state == wanted)
    return paginate(query, WaitlistEntry.created_at, WaitlistEntry.id, page_size, page_token)


def approve_waitlist_entry(app: AppContext, staff_id: str | None, entry_id: str) -> WaitlistEntry:
    """Approves an entry and queues the approval email; the person may then sign in (P1)."""
    require_id(entry_id)
    with write_transaction(app.db):
        entry = locked(WaitlistEntry.select().where(WaitlistEntry.id == entry_id), app.db).first()
        if entry is None:
            raise not_found("waiting-list entry")
        if entry.state == WaitlistState.APPROVED:
            raise precondition("ALREADY_APPROVED", "the entry is already approved")
        now = app.clock.now()
        WaitlistEntry.update(state=WaitlistState.APPROVED, approved_at=now, approved_by=staff_id).where(
            WaitlistEntry.id == entry_id
        ).execute()
        if Account.get_or_none(Account.email_hmac == entry.email_hmac) is None:
            enqueue(clock=app.clock, kind="waitlist_approved", to=entry.email, name=entry.name, key_id=entry.key_id)
        audit.record(app.clock, audit.WAITLIST_APPROVED, actor_id=staff_id, subject_id=entry_id)
    return WaitlistEntry.get_by_id(entry_id)


def get_audit_log(app: AppContext, kind: str, actor_id: str, subject_id: str, page_size: int, page_token: str):
    query = AuditEvent.select()
    kind = clean_text(kind, reason="INVALID_REQUEST", what="kind", max_len=40, required=False, multiline=False)
    if kind:
        query = query.where(AuditEvent.kind == kind.upper())
    if actor_id:
        query = query.where(AuditEvent.actor_id == require_id(actor_id, "actor_id"))
    if subject_id:
        query = query.where(AuditEvent.subject_id == require_id(subject_id, "subject_id"))
    return paginate(query, AuditEvent.at, AuditEvent.id, page_size, page_token)
