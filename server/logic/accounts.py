"""Accounts and passwordless sign-in (P1-P5, P17 but the purge, P20).

Sign-in codes: 6 digits from the CSPRNG, stored as a keyed hash, valid
`code_ttl_seconds`, one live code per email (a new one supersedes the old),
`code_max_attempts` wrong tries then locked, compared in constant time.
Requests for codes are rate-limited per email hash, and answered the same
whether or not the email may sign in. Wrong codes are also capped per email
over 24 hours (`code_max_failures_per_day`, all its codes together), after
which every sign-in for that email is refused, known or not: 5 codes an hour
times 5 tries cannot add up to a day of guessing. Session tokens are 256-bit
random, stored as a keyed hash, expire, and die on sign-out and account
deletion.

Concurrency: everything that creates or changes what belongs to one email
(waiting-list entry, account, invitations to it, codes, failed tries) first
takes that email's key lock, and rate limits take their key's lock before
counting (`faceharmony.core.db.locks`, which holds the lock order); so
concurrent calls for one email give the answers sequential calls would, and a
burst of requests is counted exactly.

Invitations (P1: invited by an active user): deleting an account revokes its
open invitations (`revoked_at`), and they stay revoked if the account is
reactivated (the inviter can invite again); accepting a revoked invitation, or
one whose inviter is not active, is refused with INVITATION_REVOKED. Once the
inviter is purged, its invitations are gone with it (NOT_INVITED).

Data keys (issue 12): emails are looked up by their keyed HMAC only (the columns are sealed). A new
waiting-list entry, invitation or staff account gets a new data key, made before the write transaction (a
rolled-back one leaves an orphan key, which the retention daemon's key sweep shreds); an account made from an
approved entry or an invitation takes that row's key, and every queued email the key of the person it goes to.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import grpc

from faceharmony.core import ids
from faceharmony.core.crypto import equal
from faceharmony.core.db import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.locks import email_key, key_lock, rate_key
from faceharmony.core.db.models import (
    Account,
    AccountState,
    CreditEntry,
    Invitation,
    KnownEmail,
    RateLimitHit,
    Session,
    SignInCode,
    UserModel,
    WaitlistEntry,
    WaitlistState,
)
from faceharmony.core.db.sealed import seal_value
from faceharmony.core.email.queue import enqueue
from faceharmony.core.jobs import evictions
from faceharmony.core.jobs.orders import UNSERVABLE_MODEL_STATES
from faceharmony.core.keys.keyring import keyring
from faceharmony.server.context import AppContext
from faceharmony.server.errors import ApiError, invalid, precondition, rate_limited
from faceharmony.server.logic.locking import locked
from faceharmony.server.validation import clean_name, clean_text, normalize_email

_CODE = re.compile(r"^\d{6}$")
FAILURE_WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True)
class SignedIn:
    token: str
    expires_at: dt.datetime
    account: Account


def _require_attestation(given: bool) -> None:
    if not given:
        raise invalid("AGE_ATTESTATION_REQUIRED", "you must confirm that you are 16 or older")


def rate_limit(app: AppContext, key: str, limit: int, window_seconds: int) -> None:
    """Counts one request under key; raises RESOURCE_EXHAUSTED past the limit. Call inside a write transaction."""
    key_lock(app.db, rate_key(key))  # count-then-insert is exact only under the key's lock
    now = app.clock.now()
    since = now - dt.timedelta(seconds=window_seconds)
    used = RateLimitHit.select().where(RateLimitHit.key == key, RateLimitHit.at > since).count()
    if used >= limit:
        raise rate_limited("too many requests; try again later")
    RateLimitHit.create(key=key, at=now)


def join_waitlist(app: AppContext, name: str, email: str, is_16_or_older: bool, note: str) -> None:
    """Stores a waiting-list entry (P1, P2). Silent when the email is already listed or has an account."""
    email = normalize_email(email)
    name = clean_name(name)
    note = clean_text(note, reason="INVALID_NOTE", what="note", max_len=1000, required=False, multiline=True)
    _require_attestation(is_16_or_older)
    email_hmac = app.hasher.email(email)
    if _listed(email_hmac):
        return
    key_id = keyring.new_key()  # before the transaction (an orphan if it rolls back or a concurrent join won)
    with write_transaction(app.db):
        key_lock(app.db, email_key(email_hmac))
        if _listed(email_hmac):
            return
        WaitlistEntry.create(
            id=ids.new_id(),
            key_id=key_id,
            email=email,
            email_hmac=email_hmac,
            name=name,
            note=note,
            is_16_or_older=True,
            created_at=app.clock.now(),
        )


def _listed(email_hmac: str) -> bool:
    """The email already has a waiting-list entry or an account."""
    return (
        WaitlistEntry.get_or_none(WaitlistEntry.email_hmac == email_hmac) is not None
        or Account.get_or_none(Account.email_hmac == email_hmac) is not None
    )


def _sign_in_recipient(app: AppContext, email_hmac: str) -> Account | WaitlistEntry | None:
    """The account or approved waiting-list entry to greet when this email may receive a sign-in code, else None."""
    account = Account.get_or_none(Account.email_hmac == email_hmac)
    if account is not None:
        if account.state == AccountState.PURGING or (
            account.state == AccountState.DEACTIVATED and account.purge_after <= app.clock.now()
        ):
            return None
        return account
    return WaitlistEntry.get_or_none(
        WaitlistEntry.email_hmac == email_hmac, WaitlistEntry.state == WaitlistState.APPROVED
    )


def request_sign_in_code(app: AppContext, email: str) -> int:
    s = app.settings
    email = normalize_email(email)
    email_hmac = app.hasher.email(email)
    with write_transaction(app.db):
        key_lock(app.db, email_key(email_hmac))
        rate_limit(app, "code:" + email_hmac, s.code_requests_per_window, s.code_request_window_seconds)
        recipient = _sign_in_recipient(app, email_hmac)
        # Every request makes a live code, whether or not the email may sign in: an email that may
        # not gets a code nobody receives, so wrong guesses lock it exactly like a real one and the
        # answers to SignIn reveal nothing about which emails have accounts.
        now = app.clock.now()
        (
            SignInCode.update(superseded=True)
            .where(SignInCode.email_hmac == email_hmac, SignInCode.consumed_at.is_null())
            .execute()
        )
        code_id, code = ids.new_id(), ids.new_code()
        SignInCode.create(
            id=code_id,
            email_hmac=email_hmac,
            code_hash=app.hasher.code(code_id, code),
            created_at=now,
            expires_at=now + dt.timedelta(seconds=s.code_ttl_seconds),
        )
        if recipient is not None:
            enqueue(
                clock=app.clock,
                kind="sign_in_code",
                to=email,
                name=recipient.name,
                key_id=recipient.key_id,
                account_id=recipient.id if isinstance(recipient, Account) else None,
                code=code,
                minutes=str(s.code_ttl_seconds // 60),
            )
    return s.code_ttl_seconds


def _new_session(app: AppContext, account: Account) -> SignedIn:
    token = ids.new_token()
    now = app.clock.now()
    expires = now + dt.timedelta(seconds=app.settings.session_ttl_seconds)
    Session.create(
        id=ids.new_id(), token_hash=app.hasher.token(token), account=account, created_at=now, expires_at=expires
    )
    return SignedIn(token=token, expires_at=expires, account=account)


def _create_account(
    app: AppContext, *, email: str, name: str, key_id: str, invited_by: Account | None = None, role: str = "user"
) -> Account:
    """Creates an account sealed with `key_id` (its waiting-list entry's, its invitation's, or a new one);
    grants the free trial only to an email whose HMAC was never seen (P5)."""
    now = app.clock.now()
    email_hmac = app.hasher.email(email)
    first_time = KnownEmail.get_or_none(KnownEmail.email_hmac == email_hmac) is None
    if first_time:
        KnownEmail.create(email_hmac=email_hmac, first_seen=now)
    account = Account.create(
        id=ids.new_id(),
        key_id=key_id,
        email=email,
        email_hmac=email_hmac,
        name=name,
        role=role,
        state=AccountState.ACTIVE,
        is_16_or_older=True,
        free_trial_granted=first_time and app.settings.free_trial_credits > 0,
        invited_by=invited_by,
        created_at=now,
        updated_at=now,
    )
    if account.free_trial_granted:
        CreditEntry.create(
            id=ids.new_id(), account=account, delta=app.settings.free_trial_credits, kind="trial", created_at=now
        )
    audit.record(app.clock, audit.ACCOUNT_CREATED, actor_id=account.id, subject_id=account.id, role=role)
    return account


def _failure_key(email_hmac: str) -> str:
    return "code-fail:" + email_hmac


def sign_in(app: AppContext, email: str, code: str) -> SignedIn:
    email = normalize_email(email)
    code = code.strip()
    if not _CODE.fullmatch(code):
        raise invalid("INVALID_CODE", "the code is wrong or has expired")
    email_hmac = app.hasher.email(email)
    failure: ApiError | None = None
    with write_transaction(app.db):
        key_lock(app.db, email_key(email_hmac))
        now = app.clock.now()
        account = Account.get_or_none(Account.email_hmac == email_hmac)
        actor = account.id if account else None
        failures = (
            RateLimitHit.select()
            .where(RateLimitHit.key == _failure_key(email_hmac), RateLimitHit.at > now - FAILURE_WINDOW)
            .count()
        )
        row = locked(
            SignInCode.select()
            .where(
                SignInCode.email_hmac == email_hmac,
                SignInCode.consumed_at.is_null(),
                SignInCode.superseded == False,  # noqa: E712 - peewee expression
            )
            .order_by(SignInCode.created_at.desc()),
            app.db,
        ).first()
        if failures >= app.settings.code_max_failures_per_day:
            # Before any code is compared, a right one included: the cap stops guessing, whatever the email.
            audit.record(app.clock, audit.SIGN_IN_FAILED, actor_id=actor, cause="daily_cap")
            failure = ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "CODE_LOCKED",
                "too many wrong codes for this email today; try again tomorrow",
            )
        elif row is None or row.expires_at <= now:
            audit.record(app.clock, audit.SIGN_IN_FAILED, actor_id=actor, cause="no_live_code")
            failure = invalid("INVALID_CODE", "the code is wrong or has expired")
        elif row.attempts >= app.settings.code_max_attempts:
            audit.record(app.clock, audit.SIGN_IN_FAILED, actor_id=actor, cause="locked")
            failure = ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "CODE_LOCKED", "too many wrong codes; request a new one"
            )
        elif not equal(app.hasher.code(row.id, code), row.code_hash):
            attempts = row.attempts + 1
            SignInCode.update(attempts=SignInCode.attempts + 1).where(SignInCode.id == row.id).execute()
            RateLimitHit.create(key=_failure_key(email_hmac), at=now)
            audit.record(app.clock, audit.SIGN_IN_FAILED, actor_id=actor, cause="wrong_code", attempt=attempts)
            if attempts >= app.settings.code_max_attempts:
                audit.record(app.clock, audit.SIGN_IN_CODE_LOCKED, actor_id=actor)
            failure = invalid("INVALID_CODE", "the code is wrong or has expired")
        else:
            consumed = (
                SignInCode.update(consumed_at=now)
                .where(SignInCode.id == row.id, SignInCode.consumed_at.is_null())
                .execute()
            )
            if consumed != 1:
                failure = invalid("INVALID_CODE", "the code is wrong or has expired")
            elif account is None:
                entry = WaitlistEntry.get_or_none(
                    WaitlistEntry.email_hmac == email_hmac, WaitlistEntry.state == WaitlistState.APPROVED
                )
                if entry is None:
                    failure = invalid("INVALID_CODE", "the code is wrong or has expired")
                else:
                    account = _create_account(app, email=email, name=entry.name, key_id=entry.key_id)
                    WaitlistEntry.update(account=account).where(WaitlistEntry.id == entry.id).execute()
            elif account.state == AccountState.PURGING or (
                account.state == AccountState.DEACTIVATED and account.purge_after <= now
            ):
                failure = precondition("GRACE_PERIOD_OVER", "the account's grace period is over")
            if failure is None:
                signed_in = _new_session(app, account)
                audit.record(app.clock, audit.SIGN_IN, actor_id=account.id, subject_id=signed_in.account.id)
    if failure is not None:
        raise failure
    return signed_in


def accept_invitation(app: AppContext, token: str, is_16_or_older: bool) -> SignedIn:
    _require_attestation(is_16_or_older)
    token = token.strip()
    if not token or len(token) > 200:
        raise invalid("NOT_INVITED", "the invitation is not valid")
    token_hash = app.hasher.token(token)
    with write_transaction(app.db):
        now = app.clock.now()
        seen = Invitation.get_or_none(Invitation.token_hash == token_hash)
        if seen is None or seen.expires_at <= now:
            raise invalid("NOT_INVITED", "the invitation is not valid or has expired")
        # The lock order: the email's key, the inviter's account (deleting it revokes its invitations), the invitation.
        key_lock(app.db, email_key(seen.email_hmac))
        inviter = locked(Account.select().where(Account.id == seen.inviter_id), app.db).first()
        invitation = locked(Invitation.select().where(Invitation.id == seen.id), app.db).first()
        if invitation is None:  # its inviter was purged meanwhile
            raise invalid("NOT_INVITED", "the invitation is not valid or has expired")
        if invitation.accepted_at is not None or Account.get_or_none(Account.email_hmac == invitation.email_hmac):
            raise precondition("INVITATION_ALREADY_USED", "the invitation was already used; sign in instead")
        if invitation.revoked_at is not None or inviter is None or inviter.state != AccountState.ACTIVE:
            raise precondition(
                "INVITATION_REVOKED", "the invitation was withdrawn: the account that sent it was deleted"
            )
        account = _create_account(
            app, email=invitation.email, name=invitation.name, key_id=invitation.key_id, invited_by=inviter
        )
        Invitation.update(accepted_at=now, account=account).where(Invitation.id == invitation.id).execute()
        audit.record(app.clock, audit.INVITATION_ACCEPTED, actor_id=account.id, subject_id=invitation.id)
        signed_in = _new_session(app, account)
        audit.record(app.clock, audit.SIGN_IN, actor_id=account.id, subject_id=account.id)
    return signed_in


def sign_out(app: AppContext, account_id: str, session_id: str) -> None:
    with write_transaction(app.db):
        Session.update(revoked_at=app.clock.now()).where(
            Session.id == session_id, Session.revoked_at.is_null()
        ).execute()
        audit.record(app.clock, audit.SIGN_OUT, actor_id=account_id, subject_id=session_id)


def get_account(app: AppContext, account_id: str) -> Account:
    return Account.get_by_id(account_id)


def update_name(app: AppContext, account_id: str, name: str) -> Account:
    name = clean_name(name)
    with write_transaction(app.db):
        key_id = Account.select(Account.key_id).where(Account.id == account_id).scalar()
        sealed_name = seal_value(Account, Account.name_sealed, account_id, key_id, name)
        Account.update({Account.name_sealed: sealed_name, Account.updated_at: app.clock.now()}).where(
            Account.id == account_id
        ).execute()
        audit.record(app.clock, audit.NAME_UPDATED, actor_id=account_id, subject_id=account_id)
    return Account.get_by_id(account_id)


def _live_invitations(email_hmac: str, now: dt.datetime):
    return Invitation.select().where(
        Invitation.email_hmac == email_hmac,
        Invitation.accepted_at.is_null(),
        Invitation.revoked_at.is_null(),
        Invitation.expires_at > now,
    )


def _invitation_likely(app: AppContext, account_id: str, email_hmac: str) -> bool:
    """Outside the transaction: the checks of invite_friend that would make it silent or refuse it."""
    since = app.clock.now() - dt.timedelta(hours=24)
    used = RateLimitHit.select().where(RateLimitHit.key == "invite:" + account_id, RateLimitHit.at > since).count()
    return (
        used < app.settings.invitations_per_day
        and Account.get_or_none(Account.email_hmac == email_hmac) is None
        and not _live_invitations(email_hmac, app.clock.now()).exists()
    )


def invite_friend(app: AppContext, account_id: str, email: str, name: str) -> None:
    """Invites an email. Silent when it already has an account or a live invitation (no enumeration, no spam)."""
    s = app.settings
    email = normalize_email(email)
    name = clean_name(name)
    email_hmac = app.hasher.email(email)
    # The invitee's key, before the transaction, when an invitation is likely to be made (an orphan otherwise,
    # which the key sweep shreds; made in the transaction only if this guess said no and was wrong).
    key_id = keyring.new_key() if _invitation_likely(app, account_id, email_hmac) else None
    with write_transaction(app.db):
        key_lock(app.db, email_key(email_hmac))
        now = app.clock.now()
        rate_limit(app, "invite:" + account_id, s.invitations_per_day, 24 * 3600)
        # Locked: an invitation is never made while its inviter's deletion revokes the others.
        inviter = locked(Account.select().where(Account.id == account_id), app.db).get()
        if inviter.state != AccountState.ACTIVE:
            raise precondition("ACCOUNT_DEACTIVATED", "the account is deactivated")
        if Account.get_or_none(Account.email_hmac == email_hmac):
            return
        if _live_invitations(email_hmac, now).exists():
            return
        token = ids.new_token()
        key_id = key_id or keyring.new_key()
        invitation = Invitation.create(
            id=ids.new_id(),
            token_hash=app.hasher.token(token),
            inviter=inviter,
            key_id=key_id,
            email=email,
            email_hmac=email_hmac,
            name=name,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=s.invitation_ttl_seconds),
        )
        enqueue(
            clock=app.clock,
            kind="invitation",
            to=email,
            name=name,
            key_id=key_id,
            inviter_name=inviter.name,
            token=token,
            expires=invitation.expires_at.strftime("%Y-%m-%d"),
        )
        audit.record(app.clock, audit.INVITATION_SENT, actor_id=account_id, subject_id=invitation.id)


def delete_account(app: AppContext, account_id: str, confirm_email: str) -> Account:
    """Deactivates at once, revokes every session, schedules the purge (P17)."""
    with write_transaction(app.db):
        account = locked(Account.select().where(Account.id == account_id), app.db).get()
        try:
            confirmed = equal(app.hasher.email(normalize_email(confirm_email)), account.email_hmac)
        except ApiError:
            confirmed = False
        if not confirmed:
            raise invalid("EMAIL_MISMATCH", "confirm_email must be the account's email")
        if account.state == AccountState.DEACTIVATED:
            # A second call that raced past the access check: the first one's purge date stands (P17).
            return account
        now = app.clock.now()
        purge_after = now + dt.timedelta(days=app.settings.account_grace_days)
        Account.update(state=AccountState.DEACTIVATED, deleted_at=now, purge_after=purge_after, updated_at=now).where(
            Account.id == account_id
        ).execute()
        Session.update(revoked_at=now).where(Session.account == account_id, Session.revoked_at.is_null()).execute()
        # P1: an invitation stands for an active member; reactivation does not bring these back.
        Invitation.update(revoked_at=now).where(
            Invitation.inviter == account_id, Invitation.accepted_at.is_null(), Invitation.revoked_at.is_null()
        ).execute()
        enqueue(
            clock=app.clock,
            kind="deletion_scheduled",
            to=account.email,
            name=account.name,
            key_id=account.key_id,
            account_id=account.id,
            purge_after=purge_after.strftime("%Y-%m-%d %H:%M UTC"),
        )
        audit.record(app.clock, audit.ACCOUNT_DELETED, actor_id=account_id, subject_id=account_id)
        # P17: every model of the account leaves every Triton replica's adapter cache (core/jobs/evictions.py).
        evictions.request(UserModel.select(UserModel.id).where(UserModel.account == account_id), now)
    return Account.get_by_id(account_id)


def reactivate_account(app: AppContext, account_id: str) -> Account:
    with write_transaction(app.db):
        account = locked(Account.select().where(Account.id == account_id), app.db).get()
        now = app.clock.now()
        if account.state != AccountState.DEACTIVATED:
            raise precondition("ACCOUNT_NOT_DEACTIVATED", "the account is active")
        if account.purge_after <= now:
            raise precondition("GRACE_PERIOD_OVER", "the account's grace period is over")
        Account.update(state=AccountState.ACTIVE, deleted_at=None, purge_after=None, updated_at=now).where(
            Account.id == account_id
        ).execute()
        enqueue(
            clock=app.clock,
            kind="reactivated",
            to=account.email,
            name=account.name,
            key_id=account.key_id,
            account_id=account.id,
        )
        audit.record(app.clock, audit.ACCOUNT_REACTIVATED, actor_id=account_id, subject_id=account_id)
        # Its models are servable again (those not deleted on their own): Triton fetches them again on demand.
        evictions.cancel(
            app.db,
            UserModel.select(UserModel.id).where(
                UserModel.account == account_id, UserModel.state.not_in(UNSERVABLE_MODEL_STATES)
            ),
        )
    return Account.get_by_id(account_id)


def create_staff(app: AppContext, email: str, name: str, role: str) -> Account:
    """Operator command: a support or admin account (no waiting list); an existing account gets the role."""
    if role not in ("support", "admin"):
        raise invalid("INVALID_ROLE", "role must be support or admin")
    email = normalize_email(email)
    name = clean_name(name)
    email_hmac = app.hasher.email(email)
    # A staff account is nobody's waiting-list entry or invitation: a key of its own, before the transaction.
    key_id = None if Account.get_or_none(Account.email_hmac == email_hmac) else keyring.new_key()
    with write_transaction(app.db):
        key_lock(app.db, email_key(email_hmac))
        account = Account.get_or_none(Account.email_hmac == email_hmac)
        if account is None:
            account = _create_account(app, email=email, name=name, role=role, key_id=key_id or keyring.new_key())
        else:
            Account.update(role=role, updated_at=app.clock.now()).where(Account.id == account.id).execute()
        audit.record(app.clock, audit.STAFF_CREATED, subject_id=account.id, role=role)
    return Account.get_by_id(account.id)
