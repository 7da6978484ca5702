"""Bearer-session authentication and the access check of each RPC (P20: every access decision is server-side)."""

from __future__ import annotations

import peewee as pw

from faceharmony.core import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.models import Account, Session
from faceharmony.server import access
from faceharmony.server.context import AppContext, Principal
from faceharmony.server.errors import ApiError, denied, precondition, unauthenticated

MAX_TOKEN_LENGTH = 200


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The bearer token; None when there is no authorization header, "" when it is malformed or repeated.

    The scheme is case-insensitive (RFC 9110 section 11.1): `Bearer`, `bearer` and `BEARER` are the same.
    """
    values = [value for key, value in metadata or () if key.lower() == "authorization"]
    if not values:
        return None
    if len(values) > 1 or not isinstance(values[0], str):
        return ""  # ambiguous: never pick one of several identities
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip() and len(token) <= MAX_TOKEN_LENGTH:
        return token.strip()
    return ""


def authenticate(app: AppContext, token: str) -> Principal:
    now = app.clock.now()
    row = (
        Session.select(Session, Account)
        .join(Account)
        .where(Session.token_hash == app.hasher.token(token), Session.revoked_at.is_null())
        .first()
    )
    if row is None:
        raise unauthenticated("UNAUTHENTICATED", "the session token is not valid; sign in again")
    if row.expires_at <= now:
        raise unauthenticated("SESSION_EXPIRED", "the session has expired; sign in again")
    return Principal(account_id=row.account.id, role=row.account.role, state=row.account.state, session_id=row.id)


def authorize(app: AppContext, method: str, rule: int | None, token: str | None) -> Principal | None:
    """Returns the caller (None for anonymous public calls) or raises the ApiError to send."""
    if rule is None:
        raise denied("unknown method")
    if rule == access.PUBLIC:
        return None
    if token is None or token == "":
        raise unauthenticated("UNAUTHENTICATED", "this call needs 'authorization: Bearer <session token>'")
    principal = authenticate(app, token)
    if rule == access.USER_OR_DEACTIVATED:
        return principal
    if principal.state != "active":
        raise precondition("ACCOUNT_DEACTIVATED", "the account is deactivated; reactivate it first")
    if rule == access.USER:
        return principal
    allowed = principal.is_staff if rule == access.STAFF else principal.role == "admin"
    if not allowed:
        _record_denial(app, principal, method)
        raise denied("this call needs a staff role" if rule == access.STAFF else "this call needs the admin role")
    return principal


def _record_denial(app: AppContext, principal: Principal, method: str) -> None:
    try:
        with write_transaction(app.db):
            audit.record(app.clock, audit.PERMISSION_DENIED, actor_id=principal.account_id, method=method)
    except pw.PeeweeException:
        pass  # the denial stands even if it could not be recorded


__all__ = ["ApiError", "authorize", "bearer_token"]
