"""The audit log (P20): security-relevant events with ids and counts only.

`record` refuses details that look like personal data (an email address) so
a careless caller fails in tests instead of leaking into the log.
"""

from __future__ import annotations

import re

from faceharmony.core import ids
from faceharmony.core.clock import Clock
from faceharmony.core.db.models import AuditEvent

SIGN_IN = "SIGN_IN"
SIGN_IN_FAILED = "SIGN_IN_FAILED"
SIGN_IN_CODE_LOCKED = "SIGN_IN_CODE_LOCKED"
SIGN_OUT = "SIGN_OUT"
ACCOUNT_CREATED = "ACCOUNT_CREATED"
ACCOUNT_DELETED = "ACCOUNT_DELETED"
ACCOUNT_REACTIVATED = "ACCOUNT_REACTIVATED"
NAME_UPDATED = "NAME_UPDATED"
INVITATION_SENT = "INVITATION_SENT"
INVITATION_ACCEPTED = "INVITATION_ACCEPTED"
WAITLIST_APPROVED = "WAITLIST_APPROVED"
STAFF_CREATED = "STAFF_CREATED"
PURCHASE_RECORDED = "PURCHASE_RECORDED"
# The store refunded or revoked a purchase (its credits taken back), or undid a refund (given back).
PURCHASE_REVOKED = "PURCHASE_REVOKED"
PURCHASE_REINSTATED = "PURCHASE_REINSTATED"
TICKET_REPLIED = "TICKET_REPLIED"
PERMISSION_DENIED = "PERMISSION_DENIED"
MODEL_DELETED = "MODEL_DELETED"
MODEL_RESTORED = "MODEL_RESTORED"
ORDER_CREATED = "ORDER_CREATED"
GENERATED_PHOTO_DELETED = "GENERATED_PHOTO_DELETED"
# The retention daemon: an account purge carries counts only (no id links it back to the person).
ACCOUNT_PURGED = "ACCOUNT_PURGED"
MODEL_PURGED = "MODEL_PURGED"
RETENTION_RUN = "RETENTION_RUN"

# What staff do to other people's accounts and things (P20): these events outlive the staff member's
# account purge, with the actor replaced by a fixed marker that is not derived from the account's id.
STAFF_ACTION_KINDS = frozenset({WAITLIST_APPROVED, MODEL_RESTORED, TICKET_REPLIED})
PURGED_STAFF_ACTOR = "purged-staff"

_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+")


def record(
    clock: Clock,
    kind: str,
    *,
    actor_id: str | None = None,
    subject_id: str | None = None,
    **details: str | int | bool,
) -> None:
    """Writes one event; call inside the transaction of the change it reports."""
    for key, value in details.items():
        if isinstance(value, str) and _EMAIL_LIKE.search(value):
            raise ValueError(f"audit detail {key!r} looks like personal data")
    AuditEvent.create(
        id=ids.new_id(),
        at=clock.now(),
        kind=kind,
        actor_id=actor_id,
        subject_id=subject_id,
        details={k: str(v) for k, v in details.items()},
    )
