"""Orders and generated photos (P14-P16): order from the caller's own READY models, paid atomically; photos readable by their owner only."""

from __future__ import annotations

import datetime as dt

import peewee as pw

from faceharmony.core.db import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.models import (
    Account,
    GeneratedPhoto,
    GeneratedPhotoState,
    ModelState,
    Order,
    OrderImage,
    UserModel,
)
from faceharmony.core.jobs import orders, styles
from faceharmony.server.context import AppContext
from faceharmony.server.errors import invalid, not_found, precondition
from faceharmony.server.logic.locking import locked
from faceharmony.server.logic.purchases import balance
from faceharmony.server.validation import optional_request_id, paginate, require_id

PHOTO_STATES = {1: GeneratedPhotoState.AVAILABLE, 2: GeneratedPhotoState.DOWNLOADED, 3: GeneratedPhotoState.REJECTED}


def _check_order(app: AppContext, model_ids: list[str], style_id: str, count: int) -> tuple[list[str], styles.Style]:
    s = app.settings
    if not model_ids:
        raise invalid("INVALID_REQUEST", "model_ids must name at least one model")
    if len(model_ids) > s.order_max_models:
        raise invalid("TOO_MANY_MODELS", f"an order names at most {s.order_max_models} models")
    wanted = [require_id(mid, "model_ids") for mid in model_ids]
    if len(set(wanted)) != len(wanted):
        raise invalid("INVALID_REQUEST", "model_ids contains duplicates")
    style = styles.get(style_id)
    if style is None:
        raise invalid("UNKNOWN_STYLE", "no such style (see ListStyles)")
    if not 1 <= count <= s.order_max_count:
        raise invalid("INVALID_COUNT", f"count must be 1-{s.order_max_count} images per model")
    return wanted, style


def _same_request(order: Order, model_ids: list[str], style_id: str, count: int) -> bool:
    return order.style_id == style_id and order.count == count and model_ids_of([order.id])[order.id] == model_ids


def create_order(
    app: AppContext, account_id: str, model_ids: list[str], style_id: str, count: int, request_id: str
) -> Order:
    """Debits count x models x credits_per_image in the order's own transaction; the same request_id returns the first order."""
    wanted, style = _check_order(app, list(model_ids), style_id, count)
    request_id = optional_request_id(request_id)

    def replay(first: Order) -> Order:
        if not _same_request(first, wanted, style.id, count):
            raise invalid("REQUEST_ID_REUSED", "request_id was used for a different order")
        return first

    with write_transaction(app.db):
        # Serialises this account's orders (PostgreSQL row lock; SQLite's IMMEDIATE transaction already does).
        account = locked(Account.select(Account.id, Account.key_id).where(Account.id == account_id), app.db).first()
        if request_id:
            first = Order.get_or_none(Order.account == account_id, Order.request_id == request_id)
            if first is not None:
                return replay(first)
        rows = {m.id: m for m in UserModel.select().where(UserModel.id.in_(wanted), UserModel.account == account_id)}
        for mid in wanted:
            model = rows.get(mid)
            if model is None:
                raise not_found("model")  # another user's, or none: never say which
            if model.state in orders.UNSERVABLE_MODEL_STATES:
                raise precondition("MODEL_PENDING_DELETION", "a named model is deleted")
            if model.state != ModelState.READY or model.current_version is None:
                raise precondition("MODEL_NOT_READY", "a named model is not ready")
        cost = len(wanted) * count * app.settings.credits_per_image
        if balance(account_id) < cost:
            raise precondition("INSUFFICIENT_CREDITS", f"this order costs {cost} credits")
        now = app.clock.now()
        order = orders.create(
            account_id,
            [(mid, rows[mid].current_version) for mid in wanted],
            style.id,
            count,
            app.settings.credits_per_image,
            request_id,
            now,
            app.settings.order_max_attempts,
            key_id=account.key_id,
        )
        audit.record(
            app.clock,
            audit.ORDER_CREATED,
            actor_id=account_id,
            subject_id=order.id,
            images=order.images_total,
            credits=cost,
        )
        return order


def model_ids_of(order_ids: list[str]) -> dict[str, list[str]]:
    """Each order's models in the order they were named."""
    out: dict[str, list[str]] = {oid: [] for oid in order_ids}
    if order_ids:
        first = pw.fn.MIN(OrderImage.position)
        rows = (
            OrderImage.select(OrderImage.order, OrderImage.model_id)
            .where(OrderImage.order.in_(order_ids))
            .group_by(OrderImage.order, OrderImage.model_id)
            .order_by(OrderImage.order, first)
            .tuples()
        )
        for order_id, model_id in rows:  # one row per (order, model), not per image
            out[order_id].append(model_id)
    return out


def get_order(app: AppContext, account_id: str, order_id: str) -> Order:
    require_id(order_id)
    order = Order.get_or_none(Order.id == order_id, Order.account == account_id)
    if order is None:
        raise not_found("order")
    return order


def list_orders(app: AppContext, account_id: str, page_size: int, page_token: str):
    return paginate(
        Order.select().where(Order.account == account_id), Order.created_at, Order.id, page_size, page_token
    )


def _visible_photos(account_id: str):
    return GeneratedPhoto.select().where(GeneratedPhoto.account == account_id, GeneratedPhoto.deleted_at.is_null())


def list_generated(app: AppContext, account_id: str, order_id: str, state: str | None, page_size: int, page_token: str):
    query = _visible_photos(account_id)
    if order_id:
        query = query.where(GeneratedPhoto.order == get_order(app, account_id, order_id).id)
    if state:
        query = query.where(GeneratedPhoto.state == state)
    return paginate(query, GeneratedPhoto.created_at, GeneratedPhoto.id, page_size, page_token)


def get_generated(app: AppContext, account_id: str, photo_id: str, for_update: bool = False) -> GeneratedPhoto:
    require_id(photo_id)
    query = _visible_photos(account_id).where(GeneratedPhoto.id == photo_id)
    photo = (locked(query, app.db) if for_update else query).first()
    if photo is None:
        raise not_found("generated photo")  # another user's, deleted, or none
    return photo


def mark_downloaded(app: AppContext, account_id: str, photo_id: str) -> None:
    """After a complete download: AVAILABLE becomes DOWNLOADED; a rejected photo stays rejected (its purge date stands)."""
    with write_transaction(app.db):
        photo = get_generated(app, account_id, photo_id, for_update=True)
        now = app.clock.now()
        values = {GeneratedPhoto.download_time: now}
        if photo.state == GeneratedPhotoState.AVAILABLE:
            values[GeneratedPhoto.state] = GeneratedPhotoState.DOWNLOADED
        GeneratedPhoto.update(values).where(GeneratedPhoto.id == photo.id).execute()


def reject(app: AppContext, account_id: str, photo_id: str) -> GeneratedPhoto:
    """P16: kept for the retention period after rejection, then purged."""
    with write_transaction(app.db):
        photo = get_generated(app, account_id, photo_id, for_update=True)
        if photo.state == GeneratedPhotoState.REJECTED:
            raise precondition("ALREADY_REJECTED", "the photo is already rejected")
        now = app.clock.now()
        GeneratedPhoto.update(
            state=GeneratedPhotoState.REJECTED,
            reject_time=now,
            purge_after=now + dt.timedelta(days=app.settings.rejected_photo_days),
        ).where(GeneratedPhoto.id == photo.id).execute()
    return GeneratedPhoto.get_by_id(photo_id)


def delete(app: AppContext, account_id: str, photo_id: str) -> None:
    """Hidden at once; the retention daemon deletes its blobs and row at its next run (purge_after = now)."""
    with write_transaction(app.db):
        photo = get_generated(app, account_id, photo_id, for_update=True)
        now = app.clock.now()
        GeneratedPhoto.update(deleted_at=now, purge_after=now).where(GeneratedPhoto.id == photo.id).execute()
        audit.record(app.clock, audit.GENERATED_PHOTO_DELETED, actor_id=account_id, subject_id=photo.id)
