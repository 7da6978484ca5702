"""Personal models (P10-P13): create from the caller's own photos, list, retrain, delete (hidden at once, restorable by support within the grace period)."""

from __future__ import annotations

import datetime as dt

import peewee as pw

from faceharmony.core import ids
from faceharmony.core.db import audit
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.models import Account, AccountState, ModelState, Photo, UserModel
from faceharmony.core.jobs import evictions, training
from faceharmony.server.context import AppContext
from faceharmony.server.errors import invalid, not_found, precondition
from faceharmony.server.logic.locking import locked
from faceharmony.server.validation import clean_text, optional_request_id, paginate, require_id

VISIBLE = (ModelState.QUEUED, ModelState.TRAINING, ModelState.READY, ModelState.FAILED)


def _display_name(raw: str) -> str:
    return clean_text(
        raw, reason="INVALID_DISPLAY_NAME", what="display_name", max_len=100, required=True, multiline=False
    )


def photo_ids_of(model_ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {mid: [] for mid in model_ids}
    if model_ids:
        for photo_id, model_id in (
            Photo.select(Photo.id, Photo.model_id)
            .where(Photo.model_id.in_(model_ids))
            .order_by(Photo.created_at, Photo.id)
            .tuples()
        ):
            out[model_id].append(photo_id)
    return out


def _own_visible(app: AppContext, account_id: str, model_id: str, for_update: bool = False) -> UserModel:
    require_id(model_id)
    query = UserModel.select().where(
        UserModel.id == model_id, UserModel.account == account_id, UserModel.state.in_(VISIBLE)
    )
    model = (locked(query, app.db) if for_update else query).first()
    if model is None:
        raise not_found("model")  # another user's, pending deletion, or none: never say which
    return model


def _replay(first: UserModel) -> UserModel:
    """The model an earlier CreateModel with this request_id made; MODEL_PENDING_DELETION once the user deleted it."""
    if first.state not in VISIBLE:
        raise precondition(
            "MODEL_PENDING_DELETION", "the model created with this request_id was deleted; send a new request_id"
        )
    return first


def create_model(
    app: AppContext, account_id: str, display_name: str, photo_ids: list[str], request_id: str
) -> UserModel:
    """Queues a model's training from 4-20 of the caller's photos. A photo must be the caller's, not deleted, in
    no other model, and not expired (an unattached photo past `unattached_photo_ttl_hours` is no longer usable,
    P11, even before the retention daemon purges it)."""
    s = app.settings
    name = _display_name(display_name)
    request_id = optional_request_id(request_id)
    wanted = [require_id(pid, "photo_ids") for pid in photo_ids]
    if len(set(wanted)) != len(wanted):
        raise invalid("INVALID_REQUEST", "photo_ids contains duplicates")
    if len(wanted) < s.model_min_photos:
        raise invalid("TOO_FEW_PHOTOS", f"a model needs at least {s.model_min_photos} photos")
    if len(wanted) > s.model_max_photos:
        raise invalid("TOO_MANY_PHOTOS", f"a model takes at most {s.model_max_photos} photos")
    try:
        with write_transaction(app.db):
            # Serialises this account's creates (the lock order: account, then photos and models), so a concurrent
            # replay of one request_id sees the first model instead of finding its photos taken.
            account = locked(Account.select(Account.id, Account.key_id).where(Account.id == account_id), app.db).first()
            if request_id:
                first = UserModel.get_or_none(UserModel.account == account_id, UserModel.request_id == request_id)
                if first is not None:
                    return _replay(first)
            photos = list(
                locked(
                    Photo.select().where(Photo.id.in_(wanted), Photo.account == account_id, Photo.deleted_at.is_null()),
                    app.db,
                )
            )
            if len(photos) != len(wanted):
                raise not_found("photo")
            if any(p.model_id is not None for p in photos):
                raise precondition("PHOTO_NOT_USABLE", "a photo already belongs to another model")
            now = app.clock.now()
            if any(p.expires_at is not None and p.expires_at <= now for p in photos):
                raise precondition("PHOTO_NOT_USABLE", "a photo has expired; upload it again")
            model = UserModel.create(
                id=ids.new_id(),
                account=account_id,
                key_id=account.key_id,
                display_name=name,
                state=ModelState.QUEUED,
                trigger_token=s.trigger_token,
                request_id=request_id,
                created_at=now,
                updated_at=now,
            )
            # The photos now live as long as the model (P11): no expiry.
            Photo.update(model_id=model.id, expires_at=None).where(Photo.id.in_(wanted)).execute()
            training.enqueue(model.id, "train", now, s.training_max_attempts)
            return model
    except pw.IntegrityError:  # a concurrent create with the same request_id won
        first = (
            UserModel.get_or_none(UserModel.account == account_id, UserModel.request_id == request_id)
            if request_id
            else None
        )
        if first is None:
            raise
        return _replay(first)


def get_model(app: AppContext, account_id: str, model_id: str) -> UserModel:
    return _own_visible(app, account_id, model_id)


def list_models(app: AppContext, account_id: str, page_size: int, page_token: str):
    query = UserModel.select().where(UserModel.account == account_id, UserModel.state.in_(VISIBLE))
    return paginate(query, UserModel.created_at, UserModel.id, page_size, page_token)


def retrain_model(app: AppContext, account_id: str, model_id: str, request_id: str = "") -> UserModel:
    """Trains the model again from its own photos (P10). Idempotent on request_id: the same one again (a retry
    after a lost reply) returns the model as it is now and queues nothing."""
    request_id = optional_request_id(request_id)
    with write_transaction(app.db):
        model = _own_visible(app, account_id, model_id, for_update=True)
        if request_id is not None and model.retrain_request_id == request_id:
            return model
        if model.state in (ModelState.QUEUED, ModelState.TRAINING):
            raise precondition("MODEL_BUSY", "the model is already training")
        # Retention may have purged a READY model's photos (FACEHARMONY_PURGE_PHOTOS_AFTER_TRAINING): a job
        # queued now could only fail.
        photos = Photo.select().where(Photo.model_id == model.id, Photo.deleted_at.is_null()).count()
        if photos < app.settings.model_min_photos:
            raise precondition(
                "TOO_FEW_PHOTOS",
                f"the model has {photos} photos left; training needs at least {app.settings.model_min_photos}",
            )
        now = app.clock.now()
        UserModel.update(
            state=ModelState.QUEUED, progress=0.0, failure_reason=None, retrain_request_id=request_id, updated_at=now
        ).where(UserModel.id == model.id).execute()
        training.enqueue(model.id, "retrain", now, app.settings.training_max_attempts)
    return UserModel.get_by_id(model_id)


def delete_model(app: AppContext, account_id: str, model_id: str) -> UserModel:
    """P13: hidden and unusable at once, training stopped, purged after the grace period unless restored."""
    with write_transaction(app.db):
        model = _own_visible(app, account_id, model_id, for_update=True)
        now = app.clock.now()
        UserModel.update(
            state=ModelState.PENDING_DELETION,
            state_before_delete=model.state,
            deleted_at=now,
            purge_after=now + dt.timedelta(days=app.settings.model_grace_days),
            updated_at=now,
        ).where(UserModel.id == model.id).execute()
        training.cancel_jobs(model.id, now)
        audit.record(app.clock, audit.MODEL_DELETED, actor_id=account_id, subject_id=model.id)
        evictions.request([model.id], now)  # P13: out of every Triton replica's adapter cache (core/jobs/evictions.py)
    return UserModel.get_by_id(model_id)


def list_pending_deletion(app: AppContext, account_id: str, page_size: int, page_token: str):
    query = UserModel.select().where(
        UserModel.state == ModelState.PENDING_DELETION, UserModel.purge_after > app.clock.now()
    )
    if account_id:
        query = query.where(UserModel.account == require_id(account_id, "account_id"))
    return paginate(query, UserModel.deleted_at, UserModel.id, page_size, page_token)


def restore_model(app: AppContext, staff_id: str, model_id: str) -> UserModel:
    """Support undoes a deletion within the grace period; an interrupted training is queued again."""
    require_id(model_id)
    with write_transaction(app.db):
        model = locked(
            UserModel.select().where(UserModel.id == model_id, UserModel.state == ModelState.PENDING_DELETION), app.db
        ).first()
        if model is None:
            raise not_found("model pending deletion")
        now = app.clock.now()
        if model.purge_after <= now:
            raise precondition("GRACE_PERIOD_OVER", "the model's grace period is over")
        interrupted = model.state_before_delete in (
            ModelState.QUEUED,
            ModelState.TRAINING,
        )  # deleting cancelled its job
        if model.current_version is not None and not interrupted:
            state = ModelState.READY
        elif model.state_before_delete == ModelState.FAILED:
            state = ModelState.FAILED
        else:
            state = ModelState.QUEUED
            kind = "train" if model.current_version is None else "retrain"
            training.enqueue(model.id, kind, now, app.settings.training_max_attempts)
        UserModel.update(
            state=state,
            state_before_delete=None,
            deleted_at=None,
            purge_after=None,
            progress=1.0 if state == ModelState.READY else 0.0,
            updated_at=now,
        ).where(UserModel.id == model.id).execute()
        audit.record(app.clock, audit.MODEL_RESTORED, actor_id=staff_id, subject_id=model.id)
        if Account.select(Account.state).where(Account.id == model.account_id).scalar() == AccountState.ACTIVE:
            evictions.cancel(app.db, [model.id])  # servable again: Triton fetches the adapter again on demand
    return UserModel.get_by_id(model_id)
