"""The email queue: `enqueue` writes a rendered email in the caller's transaction; `deliver_due` hands due emails to the transport.

The address, subject and body are sealed with the recipient's data key (core/db/sealed.py) and opened only to
send. A queued email is deleted as soon as it is sent (no copy of names or emails
stays behind). A failed send is retried with exponential backoff, and given
up after MAX_ATTEMPTS. Delivery claims rows by pushing their next attempt
into the future inside a write transaction, so two deliverers never send the
same email twice at once; a deliverer that dies after sending but before
deleting may send it once more (at-least-once, the usual email guarantee).
"""

from __future__ import annotations

import datetime as dt
import logging

import peewee as pw

from faceharmony.core import ids
from faceharmony.core.clock import Clock
from faceharmony.core.db.connection import is_sqlite, write_transaction
from faceharmony.core.db.models import EmailQueue
from faceharmony.core.email.templates import render
from faceharmony.core.email.transports import EmailTransportError, Transport, build_message
from faceharmony.core.keys.errors import KeysError, KeysUnavailable

MAX_ATTEMPTS = 8
CLAIM_SECONDS = 120
log = logging.getLogger(__name__)


def enqueue(
    *, clock: Clock, kind: str, to: str, name: str, key_id: str, account_id: str | None = None, **params: str
) -> str:
    """Queues one templated email, sealed with `key_id` (the data key of the person it goes to: their account's,
    waiting-list entry's or invitation's); call inside the transaction of the change it reports."""
    rendered = render(kind, name=name, **params)
    now = clock.now()
    row = EmailQueue.create(
        id=ids.new_id(),
        account=account_id,
        key_id=key_id,
        kind=kind,
        to_address=to,
        subject=rendered.subject,
        body=rendered.body,
        created_at=now,
        next_attempt_at=now,
    )
    return row.id


def _claim(db: pw.Database, clock: Clock, limit: int) -> list[EmailQueue]:
    now = clock.now()
    with write_transaction(db):
        query = (
            EmailQueue.select()
            .where(EmailQueue.next_attempt_at <= now)
            .order_by(EmailQueue.next_attempt_at)
            .limit(limit)
        )
        if not is_sqlite(db):
            query = query.for_update(skip_locked=True)
        rows = list(query)
        if rows:
            (
                EmailQueue.update(next_attempt_at=now + dt.timedelta(seconds=CLAIM_SECONDS))
                .where(EmailQueue.id.in_([r.id for r in rows]))
                .execute()
            )
    return rows


def deliver_due(db: pw.Database, transport: Transport, clock: Clock, sender: str, limit: int = 50) -> int:
    """Sends due emails; returns how many were sent."""
    sent = 0
    for row in _claim(db, clock, limit):
        try:
            to, subject, body = row.to_address, row.subject, row.body
        except KeysUnavailable:
            log.warning("email not opened now: keys unavailable", extra={"email_id": row.id, "kind": row.kind})
            continue  # claimed for CLAIM_SECONDS, then tried again
        except KeysError as exc:  # shredded (its person purged) or corrupt: it can never be sent
            log.error("email dropped: it does not open", extra={"email_id": row.id, "reason": exc.reason})
            EmailQueue.delete_by_id(row.id)
            continue
        message = build_message(sender=sender, to=to, subject=subject, body=body, message_id=row.id)
        try:
            transport.send(message)
        except EmailTransportError as exc:
            attempts = row.attempts + 1
            if attempts >= MAX_ATTEMPTS:
                log.error("email given up", extra={"email_id": row.id, "kind": row.kind, "error": str(exc)})
                EmailQueue.delete_by_id(row.id)
            else:
                delay = min(3600, 5 * 2**attempts)
                log.warning("email send failed", extra={"email_id": row.id, "kind": row.kind, "error": str(exc)})
                (
                    EmailQueue.update(attempts=attempts, next_attempt_at=clock.now() + dt.timedelta(seconds=delay))
                    .where(EmailQueue.id == row.id)
                    .execute()
                )
            continue
        EmailQueue.delete_by_id(row.id)
        sent += 1
        log.info("email sent", extra={"email_id": row.id, "kind": row.kind})
    return sent
