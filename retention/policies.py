"""The deletion policies (P5, P11, P13, P16-P19): what is due, and how each kind is purged.

Every purge follows the same order, so that a process killed at any point and
run again finishes the work with no orphan blob and no dangling row:

1. mark   - in a short write transaction, due rows are claimed (accounts and
            models move to state "purging", which the API never restores;
            photos get `deleted_at`), oldest first, at most one batch;
2. blobs  - their blobs are deleted (idempotent: a blob already gone is fine);
3. rows   - the rows go in one transaction, which first re-reads the blobs the
            rows name and deletes after commit any that appeared meanwhile.

Claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL and IMMEDIATE transactions
on SQLite; a second daemon that meets the same "purging" row repeats the
idempotent steps and finds the rows gone, so each purge is recorded once.
Every due-query is a range over an indexed deadline column, so the cost
follows what is due, not the size of the tables.

Two times are kept apart: `Context.now` is the moment the deadlines are
evaluated at (`--now`, or the clock), `Context.clock` the real clock, which
stamps audit events and other "when did it happen" columns.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import peewee as pw

from faceharmony.core.blobstore.base import BlobStore
from faceharmony.core.clock import Clock
from faceharmony.core.db import audit
from faceharmony.core.db.connection import is_sqlite, write_transaction
from faceharmony.core.db.models import (
    Account,
    AccountState,
    AuditEvent,
    BaseModel,
    CreditEntry,
    EmailQueue,
    GeneratedPhoto,
    Invitation,
    ModelState,
    ModelVersion,
    Order,
    OrderImage,
    Photo,
    Purchase,
    RateLimitHit,
    Session,
    SignInCode,
    SpentReceipt,
    Ticket,
    TicketMessage,
    TrainingJob,
    UserModel,
    WaitlistEntry,
)
from faceharmony.core.jobs import evictions
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.keys.keyring import keyring as installed_keyring
from faceharmony.core.settings import Settings
from faceharmony.retention import keys

log = logging.getLogger(__name__)

# The invitation rate limit counts over a fixed day (server/logic/accounts.py).
INVITATION_WINDOW = dt.timedelta(hours=24)

Blob = tuple[str, str]  # (kind, blob id)


def rate_limit_keep(settings: Settings) -> dt.timedelta:
    """How long a rate-limit row is kept: the longest window one is counted in (code requests, wrong codes (24 h),
    invitations)."""
    return max(dt.timedelta(seconds=settings.code_request_window_seconds), INVITATION_WINDOW)


@dataclass(frozen=True)
class Context:
    """One cycle: `now` is the moment the deadlines are evaluated at (`--now`, or the clock's time when the
    cycle began); `clock` is the real clock, for the times things happen (audit events, updated_at).
    `failed` holds, by kind, the items that failed this cycle: skipped until the next one."""

    db: pw.Database
    store: BlobStore
    settings: Settings
    now: dt.datetime
    clock: Clock
    keyring: Keyring | None = None  # None: the process's (core.keys.keyring.keyring)
    failed: dict[str, set[str]] = field(default_factory=dict)
    shredded: list[int] = field(default_factory=lambda: [0])  # data keys shredded this cycle

    @property
    def batch(self) -> int:
        return self.settings.retention_batch_size

    def marked_at(self) -> dt.datetime:
        """The time a mark (deleted_at) gets: the real time, but never later than `now`, so that what a cycle
        marks is due in that same cycle."""
        return min(self.now, self.clock.now())

    def keys(self) -> Keyring:
        return self.keyring if self.keyring is not None else installed_keyring.obj

    def shred(self, key_ids: set[str]) -> None:
        """After a purge's row transaction: the data keys no row names any more are deleted (retention/keys.py).
        A failure here is left to the key sweep (the rows are gone already)."""
        try:
            self.shredded[0] += keys.shred_unreferenced(self.keys(), key_ids)
        except Exception:
            log.exception("data keys not shredded now: the key sweep shreds them")

    def fail(self, kind: str, item_id: str) -> None:
        self.failed.setdefault(kind, set()).add(item_id)

    def not_failed(self, kind: str, column: pw.Field) -> list[pw.Expression]:
        """The conditions (none or one) that leave out the items of this kind that failed this cycle."""
        failed = self.failed.get(kind)
        return [column.not_in(sorted(failed))] if failed else []


def claimable(query: pw.ModelSelect, db: pw.Database) -> pw.ModelSelect:
    """Rows another daemon holds are skipped on PostgreSQL; SQLite's IMMEDIATE transaction serialises."""
    return query if is_sqlite(db) else query.for_update(skip_locked=True)


def _locked(query: pw.ModelSelect, db: pw.Database) -> pw.ModelSelect:
    return query if is_sqlite(db) else query.for_update()


def delete_blobs(store: BlobStore, blobs: Iterable[Blob]) -> int:
    return sum(1 for kind, blob_id in blobs if store.delete(kind, blob_id))


def _delete_blobs_of_rows(ctx: Context, kind: str, rows: dict[str, list[Blob]]) -> list[str]:
    """Deletes each row's blobs; returns the rows whose blobs are all gone. A row whose blob could not be
    deleted stays, for the next cycle (logged and recorded in ctx.failed), and does not hold back the others."""
    done = []
    for row_id, row_blobs in rows.items():
        try:
            delete_blobs(ctx.store, row_blobs)
        except Exception:
            log.exception(
                "blob delete failed: the row stays for the next cycle", extra={"policy": kind, "item_id": row_id}
            )
            ctx.fail(kind, row_id)
        else:
            done.append(row_id)
    return done


def _ids(query: pw.ModelSelect) -> list:
    return [row[0] for row in query.tuples()]


# --- housekeeping: expired codes, sessions, invitations, old rate-limit rows -------------------------

# kind -> (table, the indexed deadline column, the condition that makes a row due at a cycle).
HOUSEKEEPING: dict[str, tuple[type[BaseModel], pw.Field, Callable[[Context], pw.Expression]]] = {
    "sign_in_codes": (SignInCode, SignInCode.expires_at, lambda ctx: SignInCode.expires_at <= ctx.now),
    "sessions": (Session, Session.expires_at, lambda ctx: Session.expires_at <= ctx.now),
    "invitations": (
        Invitation,
        Invitation.expires_at,
        lambda ctx: (Invitation.expires_at <= ctx.now) & Invitation.accepted_at.is_null(),
    ),
    "rate_limit_hits": (
        RateLimitHit,
        RateLimitHit.at,
        lambda ctx: RateLimitHit.at <= ctx.now - rate_limit_keep(ctx.settings),
    ),
}


def purge_expired(ctx: Context, kind: str) -> int:
    """One batch of expired rows of a kind that holds no blob; returns how many went."""
    table, deadline, due_at = HOUSEKEEPING[kind]
    due = due_at(ctx)
    pk = table._meta.primary_key
    with write_transaction(ctx.db):
        ids = _ids(claimable(table.select(pk).where(due).order_by(deadline).limit(ctx.batch), ctx.db))
        if not ids:
            return 0
        named = keys.keys_of([(table, pk.in_(ids) & due)])
        deleted = table.delete().where(pk.in_(ids), due).execute()
    ctx.shred(named)  # an expired invitation's key (the invitee's, unless their account uses it)
    return deleted


# --- photos (P11) ------------------------------------------------------------------------------------


def _expired_unattached(ctx: Context) -> pw.Expression:
    return (Photo.expires_at <= ctx.now) & Photo.model_id.is_null() & Photo.deleted_at.is_null()


def mark_expired_photos(ctx: Context) -> int:
    """Unattached photos past their expiry are marked deleted; purge_deleted_photos takes them."""
    due = _expired_unattached(ctx)
    with write_transaction(ctx.db):
        ids = _ids(claimable(Photo.select(Photo.id).where(due).order_by(Photo.expires_at).limit(ctx.batch), ctx.db))
        return Photo.update(deleted_at=ctx.marked_at()).where(Photo.id.in_(ids), due).execute() if ids else 0


def _trained_photos(ctx: Context) -> pw.ModelSelect:
    return (
        Photo.select(Photo.id)
        .join(UserModel, on=(Photo.model_id == UserModel.id))
        .where(UserModel.state == ModelState.READY, Photo.deleted_at.is_null())
    )


def mark_trained_photos(ctx: Context) -> int:
    """P11 operator option: photos of a model whose training succeeded are marked for the purge."""
    if not ctx.settings.purge_photos_after_training:
        return 0
    with write_transaction(ctx.db):
        ids = _ids(_trained_photos(ctx).limit(ctx.batch))
        return (
            Photo.update(deleted_at=ctx.marked_at()).where(Photo.id.in_(ids), Photo.deleted_at.is_null()).execute()
            if ids
            else 0
        )


def purge_deleted_photos(ctx: Context) -> int:
    """One batch of photos marked deleted (by the user, by expiry, or by the P11 option): blobs, then rows."""
    due = Photo.deleted_at <= ctx.now
    query = Photo.select(Photo.id, Photo.blob_id).where(due, *ctx.not_failed("photos", Photo.id))
    rows = {pid: [("photos", blob_id)] for pid, blob_id in query.order_by(Photo.deleted_at).limit(ctx.batch).tuples()}
    if not rows:
        return 0
    done = _delete_blobs_of_rows(ctx, "photos", rows)
    if not done:
        return 0
    with write_transaction(ctx.db):
        named = keys.keys_of([(Photo, Photo.id.in_(done) & due)])
        deleted = Photo.delete().where(Photo.id.in_(done), due).execute()
    ctx.shred(named)  # each photo has a data key of its own: a copy of its blob (soft delete) opens no more
    return deleted


# --- generated photos (P16 and user deletions) ------------------------------------------------------


def purge_generated_photos(ctx: Context) -> int:
    """One batch of generated photos whose purge_after has passed (rejected +60 days, or deleted): blobs, then rows."""
    due = GeneratedPhoto.purge_after <= ctx.now
    query = (
        GeneratedPhoto.select(GeneratedPhoto.id, GeneratedPhoto.blob_id, GeneratedPhoto.preview_blob_id)
        .where(due, *ctx.not_failed("generated_photos", GeneratedPhoto.id))
        .order_by(GeneratedPhoto.purge_after)
        .limit(ctx.batch)
    )
    rows = {gid: [("generated", blob), ("generated", preview)] for gid, blob, preview in query.tuples()}
    if not rows:
        return 0
    done = _delete_blobs_of_rows(ctx, "generated_photos", rows)
    if not done:
        return 0
    with write_transaction(ctx.db):
        named = keys.keys_of([(GeneratedPhoto, GeneratedPhoto.id.in_(done) & due)])
        deleted = GeneratedPhoto.delete().where(GeneratedPhoto.id.in_(done), due).execute()
    ctx.shred(named)  # the generated photo's own key (image and preview)
    return deleted


# --- models (P13) ------------------------------------------------------------------------------------


def model_blobs(model_ids: pw.ModelSelect | list[str]) -> set[Blob]:
    blobs: set[Blob] = set()
    for adapter, metadata in (
        ModelVersion.select(ModelVersion.adapter_blob_id, ModelVersion.metadata_blob_id)
        .where(ModelVersion.model.in_(model_ids))
        .tuples()
    ):
        blobs.update({("models", adapter), ("models", metadata)})
    blobs.update(("photos", b) for (b,) in Photo.select(Photo.blob_id).where(Photo.model_id.in_(model_ids)).tuples())
    return blobs


def model_rows(model_ids: pw.ModelSelect | list[str]) -> list[tuple[type[BaseModel], pw.Expression]]:
    """What a model purge deletes, children first: its versions, jobs and every photo (P13)."""
    return [
        (ModelVersion, ModelVersion.model.in_(model_ids)),
        (TrainingJob, TrainingJob.model.in_(model_ids)),
        (Photo, Photo.model_id.in_(model_ids)),
        (UserModel, UserModel.id.in_(model_ids)),
    ]


def _claim(
    ctx: Context,
    kind: str,
    table: type[Account] | type[UserModel],
    from_state: str,
    purging_state: str,
    on_mark: Callable[[list[str]], object] | None = None,
) -> list[str]:
    """Marks a batch of the table's due rows `purging_state`, oldest first; returns the purging ones (those a killed
    run left half-purged included, those that failed this cycle left out). purge_after is indexed and set only
    while pending deletion: a range, not a scan."""
    due = (table.state == from_state) & (table.purge_after <= ctx.now)
    with write_transaction(ctx.db):
        ids = _ids(claimable(table.select(table.id).where(due).order_by(table.purge_after).limit(ctx.batch), ctx.db))
        if ids:
            table.update(state=purging_state, updated_at=ctx.clock.now()).where(table.id.in_(ids), due).execute()
            if on_mark is not None:
                on_mark(ids)
    purging = table.select(table.id).where(
        table.purge_after.is_null(False), table.state == purging_state, *ctx.not_failed(kind, table.id)
    )
    return _ids(purging.order_by(table.purge_after).limit(ctx.batch))


def claim_models(ctx: Context) -> list[str]:
    """Marks due models "purging": support can no longer restore them (restore wants pending_deletion). Their
    adapters must be out of every Triton replica's cache: the eviction is requested again with the mark
    (core/jobs/evictions.py; the record outlives the model's rows)."""
    return _claim(
        ctx,
        "models",
        UserModel,
        ModelState.PENDING_DELETION,
        ModelState.PURGING,
        lambda ids: evictions.request(ids, ctx.clock.now()),
    )


def purge_model(ctx: Context, model_id: str) -> bool:
    """Blobs, then rows in one transaction; False when another daemon finished it first."""
    blobs = model_blobs([model_id])
    delete_blobs(ctx.store, blobs)
    with write_transaction(ctx.db):
        if (
            _locked(
                UserModel.select(UserModel.id).where(UserModel.id == model_id, UserModel.state == ModelState.PURGING),
                ctx.db,
            ).first()
            is None
        ):
            return False
        late = model_blobs([model_id])
        named = keys.keys_of(model_rows([model_id]))
        counts = {
            table._meta.table_name: table.delete().where(cond).execute() for table, cond in model_rows([model_id])
        }
        audit.record(
            ctx.clock,
            audit.MODEL_PURGED,
            subject_id=model_id,
            versions=counts["model_version"],
            photos=counts["photo"],
        )
    delete_blobs(ctx.store, late - blobs)
    ctx.shred(named)  # the keys of its adapters and photos (the account's own key stays: it names the model's rows)
    return True


# --- accounts (P5, P17, P18, P19) -------------------------------------------------------------------


def account_blobs(account_id: str) -> set[Blob]:
    models = UserModel.select(UserModel.id).where(UserModel.account == account_id)
    blobs = model_blobs(models)
    blobs.update(("photos", b) for (b,) in Photo.select(Photo.blob_id).where(Photo.account == account_id).tuples())
    for blob, preview in (
        GeneratedPhoto.select(GeneratedPhoto.blob_id, GeneratedPhoto.preview_blob_id)
        .where(GeneratedPhoto.account == account_id)
        .tuples()
    ):
        blobs.update({("generated", blob), ("generated", preview)})
    return blobs


def staff_actions(account: Account) -> pw.Expression:
    """The audit events that record what the account did, as staff, to another account or its things: they
    outlive its purge with the actor replaced by audit.PURGED_STAFF_ACTOR (P20). Staff actions are known by
    their kind (audit.STAFF_ACTION_KINDS), not by the subject row, which may be gone already."""
    return (
        (AuditEvent.actor_id == account.id)
        & AuditEvent.kind.in_(sorted(audit.STAFF_ACTION_KINDS))
        & AuditEvent.subject_id.is_null(False)
        & ~_about_account(account)
    )


def _about_account(account: Account) -> pw.Expression:
    """Audit events whose subject is the account itself or one of its things (its own record)."""
    aid, hmac = account.id, account.email_hmac
    invitations = (Invitation.inviter == aid) | (Invitation.account == aid) | (Invitation.email_hmac == hmac)
    waitlist = (WaitlistEntry.account == aid) | (WaitlistEntry.email_hmac == hmac)
    owned = [
        UserModel.select(UserModel.id).where(UserModel.account == aid),
        Order.select(Order.id).where(Order.account == aid),
        Ticket.select(Ticket.id).where(Ticket.account == aid),
        Photo.select(Photo.id).where(Photo.account == aid),
        GeneratedPhoto.select(GeneratedPhoto.id).where(GeneratedPhoto.account == aid),
        Invitation.select(Invitation.id).where(invitations),
        WaitlistEntry.select(WaitlistEntry.id).where(waitlist),
        Purchase.select(Purchase.id).where(Purchase.account == aid),
        Session.select(Session.id).where(Session.account == aid),
    ]
    about = AuditEvent.subject_id == aid
    for query in owned:
        about |= AuditEvent.subject_id.in_(query)
    return about


def spend_receipts(ctx: Context, account_id: str) -> None:
    """Before the account's purchases go: their store transactions' keyed hashes, kept as spent (SpentReceipt),
    so that a receipt of theirs presented again later (by a new account) grants nothing."""
    now = ctx.clock.now()
    rows = [
        {"key_hmac": key, "store": store, "at": now, "reason": "purged"}
        for key, store in Purchase.select(Purchase.key_hmac, Purchase.store)
        .where(Purchase.account == account_id, Purchase.key_hmac.is_null(False))
        .tuples()
    ]
    if rows:
        update = {SpentReceipt.reason: "purged", SpentReceipt.at: now}
        SpentReceipt.insert_many(rows).on_conflict(conflict_target=[SpentReceipt.key_hmac], update=update).execute()


def account_rows(account: Account) -> list[tuple[type[BaseModel], pw.Expression]]:
    """Every row of the person, children first; only KnownEmail (the email's HMAC, P5) outlives it.

    The audit events that name the account (as actor or subject) or one of its things go first, while
    the things can still be found; a staff account's actions on others stay, tombstoned (staff_actions).
    tests/test_retention.py reflects over the schema to prove that every table that can hold a trace of
    an account appears here.
    """
    aid, hmac = account.id, account.email_hmac
    models = UserModel.select(UserModel.id).where(UserModel.account == aid)
    orders = Order.select(Order.id).where(Order.account == aid)
    tickets = Ticket.select(Ticket.id).where(Ticket.account == aid)
    invitations = (Invitation.inviter == aid) | (Invitation.account == aid) | (Invitation.email_hmac == hmac)
    waitlist = (WaitlistEntry.account == aid) | (WaitlistEntry.email_hmac == hmac)
    about_account = ((AuditEvent.actor_id == aid) & ~staff_actions(account)) | _about_account(account)
    return [
        (AuditEvent, about_account),
        (TicketMessage, TicketMessage.ticket.in_(tickets)),
        (Ticket, Ticket.account == aid),
        (GeneratedPhoto, GeneratedPhoto.account == aid),
        (OrderImage, OrderImage.order.in_(orders)),
        (Order, Order.account == aid),
        (ModelVersion, ModelVersion.model.in_(models)),
        (TrainingJob, TrainingJob.model.in_(models)),
        (Photo, Photo.account == aid),
        (UserModel, UserModel.account == aid),
        (Purchase, Purchase.account == aid),
        (CreditEntry, CreditEntry.account == aid),
        (Session, Session.account == aid),
        (SignInCode, SignInCode.email_hmac == hmac),
        (RateLimitHit, RateLimitHit.key.in_(["code:" + hmac, "code-fail:" + hmac, "invite:" + aid, "store:" + aid])),
        (EmailQueue, _persons_mail(account)),  # before the invitations and entries its condition reads
        (Invitation, invitations),
        (WaitlistEntry, waitlist),
        (Account, Account.id == aid),
    ]


def _persons_mail(account: Account) -> pw.Expression:
    """The queued emails the purge takes: the account's, and those sealed with one of the person's other keys:
    their waiting-list entries' and invitations' (a "waitlist approved" mail sealed with the entry's key while
    the account took an invitation's), and those of the invitations the person sent that nobody accepted (the
    mail names the inviter). An accepted invitation's key is its invitee's account key: their mail stays.
    Subqueries, evaluated when the rows go: account_rows deletes the emails before those rows."""
    aid, hmac = account.id, account.email_hmac
    invitations = ((Invitation.inviter == aid) | (Invitation.account == aid) | (Invitation.email_hmac == hmac)) & (
        Invitation.account.is_null() | (Invitation.account == aid)
    )
    waitlist = ((WaitlistEntry.account == aid) | (WaitlistEntry.email_hmac == hmac)) & (
        WaitlistEntry.account.is_null() | (WaitlistEntry.account == aid)
    )
    return (
        (EmailQueue.account == aid)
        | (EmailQueue.key_id == account.key_id)
        | EmailQueue.key_id.in_(Invitation.select(Invitation.key_id).where(invitations))
        | EmailQueue.key_id.in_(WaitlistEntry.select(WaitlistEntry.key_id).where(waitlist))
    )


def account_links(account_id: str) -> list[tuple[pw.Field, pw.Expression]]:
    """References from other people's rows that outlive the account: set to NULL (as the foreign keys do)."""
    return [
        (Account.invited_by, Account.invited_by == account_id),
        (WaitlistEntry.approved_by, WaitlistEntry.approved_by == account_id),
        (TicketMessage.staff, TicketMessage.staff == account_id),
    ]


def claim_accounts(ctx: Context) -> list[str]:
    """Marks due accounts "purging": no reactivation, no sign-in, and the sessions opened to reactivate die."""

    def on_mark(ids: list[str]) -> None:
        Session.update(revoked_at=ctx.clock.now()).where(
            Session.account.in_(ids), Session.revoked_at.is_null()
        ).execute()
        # Before the purge, every model of the accounts leaves every Triton replica's cache (the eviction
        # record outlives the rows: core/jobs/evictions.py).
        evictions.request(UserModel.select(UserModel.id).where(UserModel.account.in_(ids)), ctx.clock.now())

    return _claim(ctx, "accounts", Account, AccountState.DEACTIVATED, AccountState.PURGING, on_mark)


def purge_account(ctx: Context, account_id: str) -> bool:
    """Blobs, then every row in one transaction; the audit entry holds counts only, no id that links back."""
    blobs = account_blobs(account_id)
    delete_blobs(ctx.store, blobs)
    with write_transaction(ctx.db):
        account = _locked(
            Account.select().where(Account.id == account_id, Account.state == AccountState.PURGING), ctx.db
        ).first()
        if account is None:
            return False
        # The lock order (core/db/locks.py): the account, its models, then their jobs (deleted below before the
        # models): a trainer's write locks the model before the job too.
        list(_locked(UserModel.select(UserModel.id).where(UserModel.account == account_id), ctx.db))
        late = account_blobs(account_id)
        for field, cond in account_links(account_id):
            field.model.update({field: None}).where(cond).execute()
        tombstoned = AuditEvent.update(actor_id=audit.PURGED_STAFF_ACTOR).where(staff_actions(account)).execute()
        named = keys.keys_of(account_rows(account)) | {account.key_id}
        spend_receipts(ctx, account.id)
        counts = {table._meta.table_name: table.delete().where(cond).execute() for table, cond in account_rows(account)}
        if tombstoned:
            counts["staff_actions_kept"] = tombstoned
        audit.record(ctx.clock, audit.ACCOUNT_PURGED, blobs=len(blobs | late), **{k: v for k, v in counts.items() if v})
    delete_blobs(ctx.store, late - blobs)
    ctx.shred(named)  # the person's key, and those of rows of others that went with it (invitations they sent)
    return True


# --- what is due (dry run, overdue metric) ----------------------------------------------------------


def _count(query: pw.ModelSelect) -> int:
    return query.count()


def _due_accounts(ctx: Context) -> pw.ModelSelect:
    return Account.select().where(
        Account.purge_after <= ctx.now, Account.state.in_([AccountState.DEACTIVATED, AccountState.PURGING])
    )


def _due_models(ctx: Context) -> pw.ModelSelect:
    return UserModel.select(UserModel.id).where(
        UserModel.purge_after <= ctx.now, UserModel.state.in_([ModelState.PENDING_DELETION, ModelState.PURGING])
    )


def due_counts(ctx: Context) -> dict[str, int]:
    """What a cycle at ctx.now would purge, by kind (no writes). Accounts' and models' contents are counted too."""
    counts = {
        "accounts": _count(_due_accounts(ctx)),
        "models": _count(_due_models(ctx)),
        "photos": _count(Photo.select().where((Photo.deleted_at <= ctx.now) | _expired_unattached(ctx))),
        "generated_photos": _count(GeneratedPhoto.select().where(GeneratedPhoto.purge_after <= ctx.now)),
    }
    if ctx.settings.purge_photos_after_training:
        counts["photos"] += _count(_trained_photos(ctx))
    for kind, (table, _, due_at) in HOUSEKEEPING.items():
        counts[kind] = _count(table.select().where(due_at(ctx)))
    return counts


def contents_of_due(ctx: Context) -> dict[str, int]:
    """Rows held by the due accounts and models, by table (dry run: what the account and model purges take)."""
    totals: dict[str, int] = {}
    for account in _due_accounts(ctx).iterator():
        for table, cond in account_rows(account):
            totals[table._meta.table_name] = totals.get(table._meta.table_name, 0) + _count(table.select().where(cond))
    for table, cond in model_rows(_due_models(ctx)):
        name = f"{table._meta.table_name} (of deleted models)"
        totals[name] = _count(table.select().where(cond))
    return {k: v for k, v in totals.items() if v}
