"""Bearer-session authentication, the access check of each RPC, and the re-check of the sessions of long-lived streams (P20: every access decision is server-side)."""

from __future__ import annotations

import peewee as pw

from faceharmony.core.db import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.models import Account, AccountState, Session
from faceharmony.server import access
from faceharmony.server.context import AppContext, Principal
from faceharmony.server.errors import ApiError, denied, precondition, unauthenticated

MAX_TOKEN_LENGTH = 200
SESSION_CHUNK = 500


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
        raise _not_valid()
    if row.expires_at <= now:
        raise _expired()
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
    if principal.state != AccountState.ACTIVE:
        raise _deactivated()
    if rule == access.USER:
        return principal
    allowed = principal.is_staff if rule == access.STAFF else principal.role == "admin"
    if not allowed:
        _record_denial(app, principal, method)
        raise denied("this call needs a staff role" if rule == access.STAFF else "this call needs the admin role")
    return principal


def session_refusals(app: AppContext, session_ids: list[str]) -> dict[str, ApiError]:
    """For long-lived USER calls (Watch streams): the error a unary USER call of each session would get now.

    Sessions that would still pass are absent. One narrow query per 500 sessions, so a watch hub can check
    every watcher's session once per tick: revoked (sign-out, account deletion) or unknown sessions get
    UNAUTHENTICATED, expired ones SESSION_EXPIRED, those of a deactivated account ACCOUNT_DEACTIVATED.
    """
    now = app.clock.now()
    alive: dict[str, tuple] = {}
    for start in range(0, len(session_ids), SESSION_CHUNK):
        chunk = session_ids[start : start + SESSION_CHUNK]
        query = (
            Session.select(Session.id, Session.expires_at, Account.state)
            .join(Account)
            .where(Session.id.in_(chunk), Session.revoked_at.is_null())
        )
        for session_id, expires_at, state in query.tuples():
            alive[session_id] = (expires_at, state)
    refusals: dict[str, ApiError] = {}
    for session_id in session_ids:
        if session_id not in alive:
            refusals[session_id] = _not_valid()
        elif alive[session_id][0] <= now:
            refusals[session_id] = _expired()
        elif alive[session_id][1] != AccountState.ACTIVE:
            refusals[session_id] = _deactivated()
    return refusals


def _not_valid() -> ApiError:
    return unauthenticated("UNAUTHENTICATED", "the session token is not valid; sign in again")


def _expired() -> ApiError:
    return unauthenticated("SESSION_EXPIRED", "the session has expired; sign in again")


def _deactivated() -> ApiError:
    return precondition("ACCOUNT_DEACTIVATED", "the account is deactivated; reactivate it first")


def _record_denial(app: AppContext, principal: Principal, method: str) -> None:
    try:
        with write_transaction(app.db):
            audit.record(app.clock, audit.PERMISSION_DENIED, actor_id=principal.account_id, method=method)
    except pw.PeeweeException:
        pass  # the denial stands even if it could not be recorded


__all__ = ["ApiError", "authorize", "bearer_token", "session_refusals"]
