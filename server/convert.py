"""Database rows to API messages."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

from faceharmony.core.db import models as m
from faceharmony.v1 import account_pb2, admin_pb2, model_pb2, order_pb2, photo_pb2, purchase_pb2, support_pb2

_ROLES = {"user": account_pb2.ROLE_USER, "support": account_pb2.ROLE_SUPPORT, "admin": account_pb2.ROLE_ADMIN}
# PURGING: the retention daemon is deleting it; still deactivated as far as anyone can tell.
_ACCOUNT_STATES = {
    m.AccountState.ACTIVE: account_pb2.ACCOUNT_STATE_ACTIVE,
    m.AccountState.DEACTIVATED: account_pb2.ACCOUNT_STATE_DEACTIVATED,
    m.AccountState.PURGING: account_pb2.ACCOUNT_STATE_DEACTIVATED,
}
_WAITLIST_STATES = {
    m.WaitlistState.PENDING: admin_pb2.WAITLIST_ENTRY_STATE_PENDING,
    m.WaitlistState.APPROVED: admin_pb2.WAITLIST_ENTRY_STATE_APPROVED,
}
_STORES = {"app_store": purchase_pb2.STORE_APP_STORE, "google_play": purchase_pb2.STORE_GOOGLE_PLAY}
_TICKET_STATES = {
    m.TicketState.OPEN: support_pb2.TICKET_STATE_OPEN,
    m.TicketState.ANSWERED: support_pb2.TICKET_STATE_ANSWERED,
    m.TicketState.CLOSED: support_pb2.TICKET_STATE_CLOSED,
}
_AUTHORS = {"user": support_pb2.TICKET_AUTHOR_USER, "staff": support_pb2.TICKET_AUTHOR_STAFF}


def ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def from_ts(value: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    """A client's timestamp, or None; out-of-range values are the client's error (INVALID_REQUEST)."""
    if not present:
        return None
    try:
        return value.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        from faceharmony.server.errors import invalid

        raise invalid("INVALID_REQUEST", "timestamp out of range") from None


def account(row: m.Account) -> account_pb2.Account:
    return account_pb2.Account(
        id=row.id,
        email=row.email,
        name=row.name,
        role=_ROLES[row.role],
        state=_ACCOUNT_STATES[row.state],
        create_time=ts(row.created_at),
        update_time=ts(row.updated_at),
        delete_time=ts(row.deleted_at),
        purge_after=ts(row.purge_after),
    )


def waitlist_entry(row: m.WaitlistEntry) -> admin_pb2.WaitlistEntry:
    return admin_pb2.WaitlistEntry(
        id=row.id,
        name=row.name,
        email=row.email,
        note=row.note,
        is_16_or_older=row.is_16_or_older,
        state=_WAITLIST_STATES[row.state],
        create_time=ts(row.created_at),
        approve_time=ts(row.approved_at),
    )


def audit_event(row: m.AuditEvent) -> admin_pb2.AuditEvent:
    return admin_pb2.AuditEvent(
        id=row.id,
        time=ts(row.at),
        kind=row.kind,
        actor_id=row.actor_id or "",
        subject_id=row.subject_id or "",
        details=row.details or {},
    )


def purchase(row: m.Purchase) -> purchase_pb2.Purchase:
    return purchase_pb2.Purchase(
        id=row.id,
        store=_STORES[row.store],
        product_id=row.product_id,
        transaction_id=row.transaction_id,
        credits=row.credits,
        create_time=ts(row.created_at),
        purchase_time=ts(row.purchase_time),
        quantity=row.quantity,
        state=purchase_pb2.PURCHASE_STATE_REVOKED if row.revoked_at else purchase_pb2.PURCHASE_STATE_GRANTED,
        revoke_time=ts(row.revoked_at),
        environment=row.environment or "",
    )


def ticket(row: m.Ticket, messages: list[m.TicketMessage] | None = None) -> support_pb2.Ticket:
    return support_pb2.Ticket(
        id=row.id,
        account_id=row.account_id,
        subject=row.subject,
        state=_TICKET_STATES[row.state],
        messages=[
            support_pb2.TicketMessage(
                id=msg.id, author=_AUTHORS[msg.author], body=msg.body, create_time=ts(msg.created_at)
            )
            for msg in messages or []
        ],
        create_time=ts(row.created_at),
        update_time=ts(row.updated_at),
    )


def photo(row: m.Photo) -> photo_pb2.Photo:
    return photo_pb2.Photo(
        id=row.id,
        create_time=ts(row.created_at),
        width=row.width,
        height=row.height,
        model_id=row.model_id or "",
        expire_time=ts(row.expires_at),
    )


_MODEL_STATES = {
    m.ModelState.QUEUED: model_pb2.MODEL_STATE_QUEUED,
    m.ModelState.TRAINING: model_pb2.MODEL_STATE_TRAINING,
    m.ModelState.READY: model_pb2.MODEL_STATE_READY,
    m.ModelState.FAILED: model_pb2.MODEL_STATE_FAILED,
    m.ModelState.PENDING_DELETION: model_pb2.MODEL_STATE_PENDING_DELETION,
    m.ModelState.PURGING: model_pb2.MODEL_STATE_PENDING_DELETION,  # the retention daemon is deleting it
}


def model(row: m.UserModel, photo_ids: list[str]) -> model_pb2.Model:
    return model_pb2.Model(
        id=row.id,
        display_name=row.display_name,
        state=_MODEL_STATES[row.state],
        progress=row.progress,
        photo_ids=photo_ids,
        create_time=ts(row.created_at),
        update_time=ts(row.updated_at),
        version=row.current_version or 0,
        failure_reason=row.failure_reason or "",
        delete_time=ts(row.deleted_at),
        purge_after=ts(row.purge_after),
        trigger_token=row.trigger_token,
    )


def models_with_photos(rows: list[m.UserModel]) -> list[model_pb2.Model]:
    """Model messages with their photo ids, read in one query; call on the database pool."""
    from faceharmony.server.logic.models import photo_ids_of

    photos = photo_ids_of([r.id for r in rows])
    return [model(r, photos[r.id]) for r in rows]


_ORDER_STATES = {
    m.OrderState.QUEUED: order_pb2.ORDER_STATE_QUEUED,
    m.OrderState.RUNNING: order_pb2.ORDER_STATE_RUNNING,
    m.OrderState.COMPLETED: order_pb2.ORDER_STATE_COMPLETED,
    m.OrderState.FAILED: order_pb2.ORDER_STATE_FAILED,
    m.OrderState.CANCELLED: order_pb2.ORDER_STATE_CANCELLED,
}
_GENERATED_STATES = {
    m.GeneratedPhotoState.AVAILABLE: order_pb2.GENERATED_PHOTO_STATE_AVAILABLE,
    m.GeneratedPhotoState.DOWNLOADED: order_pb2.GENERATED_PHOTO_STATE_DOWNLOADED,
    m.GeneratedPhotoState.REJECTED: order_pb2.GENERATED_PHOTO_STATE_REJECTED,
}


def order(row: m.Order, model_ids: list[str]) -> order_pb2.Order:
    return order_pb2.Order(
        id=row.id,
        model_ids=model_ids,
        style_id=row.style_id,
        count=row.count,
        state=_ORDER_STATES[row.state],
        images_total=row.images_total,
        images_done=row.images_done,
        images_failed=row.images_failed,
        credits_charged=row.credits_charged,
        credits_refunded=row.credits_refunded,
        create_time=ts(row.created_at),
        update_time=ts(row.updated_at),
    )


def orders(rows: list[m.Order]) -> list[order_pb2.Order]:
    """Order messages with their model ids, read in one query; call on the database pool."""
    from faceharmony.server.logic.orders import model_ids_of

    models = model_ids_of([r.id for r in rows])
    return [order(r, models[r.id]) for r in rows]


def generated_photo(row: m.GeneratedPhoto) -> order_pb2.GeneratedPhoto:
    # A rejected photo's purge date is shown; a deleted one is never returned.
    return order_pb2.GeneratedPhoto(
        id=row.id,
        order_id=row.order_id,
        model_id=row.model_id,
        state=_GENERATED_STATES[row.state],
        width=row.width,
        height=row.height,
        create_time=ts(row.created_at),
        download_time=ts(row.download_time),
        reject_time=ts(row.reject_time),
        purge_after=ts(row.purge_after) if row.state == m.GeneratedPhotoState.REJECTED else None,
    )
