"""Photo uploads (P6-P11): verify before storing anything, then blob first and row second.

Order of work and what a failure leaves behind:
1. the bytes are decoded and checked in memory (no temporary file), then
   verified (exactly one face, nothing unsafe): a rejection stores nothing;
2. the stripped JPEG goes to the blob store under a new random id (the API's
   role can create photos, never read or delete them): a failure stores nothing;
3. the row is inserted: if that fails, the blob written in step 2 has no row.
   Such orphans are removed by `faceharmony.retention.orphans.sweep_orphan_blobs`
   (run by the retention daemon) once they are older than its safety margin;
   a test proves it.
"""

from __future__ import annotations

import datetime as dt

import grpc
import peewee as pw

from faceharmony.core import ids
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.db.models import Account, Photo
from faceharmony.core.verify.base import PreparedImage, Verdict
from faceharmony.server.context import AppContext
from faceharmony.server.errors import ApiError, invalid, not_found, precondition
from faceharmony.server.logic.locking import locked
from faceharmony.server.validation import paginate, require_id


def rejection_for(verdict: Verdict) -> ApiError | None:
    """The refusal a verdict calls for, or None when the photo is acceptable (P6)."""
    if verdict.nsfw:
        return invalid("NSFW", "the photo contains unsafe content")
    if verdict.faces == 0:
        return invalid("NO_FACE", "no human face was found in the photo")
    if verdict.faces > 1:
        return invalid("MULTIPLE_FACES", "the photo must show exactly one face")
    return None


def existing_upload(app: AppContext, account_id: str, request_id: str | None) -> Photo | None:
    """The photo an earlier upload with this request_id stored, or None. FAILED_PRECONDITION PHOTO_DELETED when
    the user has deleted it since: its row keeps the request_id until the purge, and nothing is stored again.
    Checked before the blob is written, so a refused upload writes no blob."""
    if not request_id:
        return None
    first = Photo.get_or_none(Photo.account == account_id, Photo.request_id == request_id)
    if first is not None and first.deleted_at is not None:
        raise precondition(
            "PHOTO_DELETED", "the photo uploaded with this request_id was deleted; send a new request_id"
        )
    return first


def check_quota(app: AppContext, account_id: str) -> None:
    """RESOURCE_EXHAUSTED when the account already keeps its quota of photos. Checked early (before the upload is
    verified) and again in record_upload's transaction after the account row is locked (as the credit debit
    does; on SQLite the IMMEDIATE transaction), so concurrent uploads of one account count one after another
    and never exceed the quota."""
    count = Photo.select().where(Photo.account == account_id, Photo.deleted_at.is_null()).count()
    if count >= app.settings.max_photos_per_account:
        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "too many photos; delete some first")


def record_upload(
    app: AppContext, account_id: str, blob_id: str, key_id: str, image: PreparedImage, request_id: str | None
) -> Photo:
    """Inserts the row for a stored blob, sealed with the photo's own data key `key_id` (its purge shreds it). A
    concurrent upload with the same request_id returns the first photo (our blob and key are orphans, swept)."""
    now = app.clock.now()
    try:
        with write_transaction(app.db):
            locked(Account.select(Account.id).where(Account.id == account_id), app.db).first()
            first = existing_upload(app, account_id, request_id)
            if first is not None:  # a replay that finished first: its photo (our blob is an orphan, swept later)
                return first
            check_quota(app, account_id)  # a refusal here leaves our blob an orphan too
            return Photo.create(
                id=ids.new_id(),
                account=account_id,
                key_id=key_id,
                blob_id=blob_id,
                width=image.width,
                height=image.height,
                size_bytes=len(image.jpeg),
                request_id=request_id,
                created_at=now,
                expires_at=now + dt.timedelta(hours=app.settings.unattached_photo_ttl_hours),
            )
    except pw.IntegrityError:
        # A concurrent upload with the same request_id won (or its photo was deleted meanwhile: PHOTO_DELETED).
        # Our blob is now an orphan: swept by the retention daemon (the API's role cannot delete blobs).
        first = existing_upload(app, account_id, request_id)
        if first is None:
            raise
        return first


def list_photos(app: AppContext, account_id: str, page_size: int, page_token: str):
    query = Photo.select().where(Photo.account == account_id, Photo.deleted_at.is_null())
    return paginate(query, Photo.created_at, Photo.id, page_size, page_token)


def delete_photo(app: AppContext, account_id: str, photo_id: str) -> None:
    """Hides an unattached photo at once; the retention daemon purges its blob and row."""
    require_id(photo_id)
    with write_transaction(app.db):
        photo = locked(
            Photo.select().where(Photo.id == photo_id, Photo.account == account_id, Photo.deleted_at.is_null()), app.db
        ).first()
        if photo is None:
            raise not_found("photo")
        if photo.model_id is not None:
            raise precondition("PHOTO_IN_USE", "the photo belongs to a model; delete the model instead")
        Photo.update(deleted_at=app.clock.now()).where(Photo.id == photo_id).execute()
