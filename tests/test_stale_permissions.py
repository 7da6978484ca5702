"""What a client may no longer do once time or a deletion took the right away, on both backends: a request_id of a
deleted photo or model, an expired unattached photo (P11), an invitation from a deleted inviter (P1), and the daily
cap on wrong sign-in codes (the same answer for unknown emails). Answers are defined reasons, never INTERNAL, and a
refused upload leaves no blob."""

from __future__ import annotations

import datetime as dt
import os

import grpc

from faceharmony.core.db import models as m
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import photo_pb2 as p
from faceharmony.v1 import support_pb2 as sp
from tests.support import images
from tests.support.harness import status_of


def blob_files(h) -> list[str]:
    folder = h.settings.blob_dir / "photos"
    return sorted(os.listdir(folder)) if folder.exists() else []


def upload(h, user, **kwargs):
    return h.photos.UploadPhoto(p.UploadPhotoRequest(content=images.one_face(), **kwargs), metadata=user.md).photo


# --- request_ids of deleted things -------------------------------------------------------------------


def test_upload_with_the_request_id_of_a_deleted_photo_is_refused_and_stores_nothing(harness):
    h = harness
    user = h.sign_up("again@example.com")
    photo = upload(h, user, request_id="r-1")
    assert upload(h, user, request_id="r-1").id == photo.id  # a replay answers the first photo
    h.photos.DeletePhoto(p.DeletePhotoRequest(id=photo.id), metadata=user.md)
    blobs, rows = blob_files(h), h.db_call(m.Photo.select().count)
    code, reason = status_of(
        h.photos.UploadPhoto, p.UploadPhotoRequest(content=images.one_face(), request_id="r-1"), metadata=user.md
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PHOTO_DELETED")
    assert (blob_files(h), h.db_call(m.Photo.select().count)) == (blobs, rows)  # no blob written, no row
    assert upload(h, user, request_id="r-2").id != photo.id  # a new request_id works


def test_create_model_with_the_request_id_of_a_deleted_model_is_refused(harness):
    h = harness
    user = h.sign_up("remodel@example.com")
    photo_ids = [upload(h, user).id for _ in range(4)]
    request = mp.CreateModelRequest(display_name="Me", photo_ids=photo_ids, request_id="m-1")
    model = h.models.CreateModel(request, metadata=user.md).model
    assert h.models.CreateModel(request, metadata=user.md).model.id == model.id
    h.models.DeleteModel(mp.DeleteModelRequest(id=model.id), metadata=user.md)
    jobs = h.db_call(m.TrainingJob.select().count)
    code, reason = status_of(h.models.CreateModel, request, metadata=user.md)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_PENDING_DELETION")
    assert h.db_call(m.TrainingJob.select().count) == jobs and h.db_call(m.UserModel.select().count) == 1


def test_ticket_request_ids_replay_and_never_fail(harness):
    """Tickets are never soft-deleted: a replay answers the first ticket."""
    h = harness
    user = h.sign_up("tick@example.com")
    req = sp.CreateTicketRequest(subject="Help", body="Hi", request_id="t-1")
    first = h.support.CreateTicket(req, metadata=user.md).ticket
    assert h.support.CreateTicket(req, metadata=user.md).ticket.id == first.id


# --- P11: an expired unattached photo ----------------------------------------------------------------


def test_an_expired_unattached_photo_cannot_be_put_into_a_model(harness):
    h = harness
    user = h.sign_up("expired@example.com")
    old = upload(h, user)
    h.clock.advance(seconds=h.settings.unattached_photo_ttl_hours * 3600 - 60)
    fresh = [upload(h, user).id for _ in range(3)]
    h.clock.advance(seconds=60)  # the first photo's expiry has come, before any retention run
    code, reason = status_of(
        h.models.CreateModel, mp.CreateModelRequest(display_name="Me", photo_ids=[old.id, *fresh]), metadata=user.md
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PHOTO_NOT_USABLE")
    assert h.db_call(m.UserModel.select().count) == 0
    assert h.db_call(lambda: m.Photo.get_by_id(old.id).model_id) is None
    model = h.models.CreateModel(
        mp.CreateModelRequest(display_name="Me", photo_ids=[*fresh, upload(h, user).id]), metadata=user.md
    ).model
    assert model.state == mp.MODEL_STATE_QUEUED


# --- P1: invitations of a deleted inviter ------------------------------------------------------------


def invite(h, inviter, email: str) -> str:
    h.accounts.InviteFriend(a.InviteFriendRequest(email=email, name="Guest"), metadata=inviter.md)
    return h.last_email_to(email, "invited").get_content().split("invitation code:")[1].split()[0]


def accept(h, token: str):
    return status_of(
        h.accounts.AcceptInvitation, a.AcceptInvitationRequest(invitation_token=token, is_16_or_older=True)
    )


def test_deleting_an_account_revokes_its_invitations_and_reactivation_does_not_restore_them(harness):
    h = harness
    inviter = h.sign_up("leaver@example.com")
    token = invite(h, inviter, "guest@example.com")
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=inviter.email), metadata=inviter.md)
    assert accept(h, token) == (grpc.StatusCode.FAILED_PRECONDITION, "INVITATION_REVOKED")
    assert h.db_call(m.Account.select().where(m.Account.email_hmac == h.email_hmac("guest@example.com")).count) == 0
    # Reactivated: the old invitation stays revoked; a new one works.
    session = h.accounts.SignIn(a.SignInRequest(email=inviter.email, code=h.code_for(inviter.email))).session_token
    md = (("authorization", f"Bearer {session}"),)
    h.accounts.ReactivateAccount(a.ReactivateAccountRequest(), metadata=md)
    assert accept(h, token) == (grpc.StatusCode.FAILED_PRECONDITION, "INVITATION_REVOKED")
    inviter.token = session
    fresh = invite(h, inviter, "guest@example.com")
    assert accept(h, fresh) == (grpc.StatusCode.OK, "")


def test_an_invitation_whose_inviter_is_not_active_is_refused(harness):
    """Belt and braces: an open invitation of an account deactivated some other way (or being purged) is refused too."""
    h = harness
    inviter = h.sign_up("gone@example.com")
    token = invite(h, inviter, "orphan@example.com")
    h.db_call(lambda: m.Account.update(state="purging").where(m.Account.id == inviter.account_id).execute())
    assert accept(h, token) == (grpc.StatusCode.FAILED_PRECONDITION, "INVITATION_REVOKED")


# --- the daily cap on wrong sign-in codes ------------------------------------------------------------


def wrong_codes(h, email: str, n: int) -> list[tuple]:
    """n wrong tries, spread over fresh codes (a code locks after code_max_attempts)."""
    out = []
    per_code = h.settings.code_max_attempts
    for i in range(n):
        if i % per_code == 0:  # a fresh code, past the request rate limit's pace
            h.clock.advance(seconds=h.settings.code_request_window_seconds // h.settings.code_requests_per_window + 1)
            h.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email=email))
        out.append(status_of(h.accounts.SignIn, a.SignInRequest(email=email, code="000000")))
    return out


def test_wrong_codes_are_capped_per_day_the_same_for_known_and_unknown_emails(harness):
    h = harness
    s = h.settings
    member = h.sign_up("target@example.com")
    cap = s.code_max_failures_per_day
    locked = (grpc.StatusCode.RESOURCE_EXHAUSTED, "CODE_LOCKED")
    answers = {}
    for email in (member.email, "nobody@example.com"):
        tries = wrong_codes(h, email, cap)
        # 000000 might be the real code once in a million: then the try is a sign-in, and this test is unlucky.
        assert set(tries) == {(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CODE")}
        h.clock.advance(seconds=s.code_request_window_seconds)
        h.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email=email))
        answers[email] = status_of(h.accounts.SignIn, a.SignInRequest(email=email, code="000000"))
    assert answers == {member.email: locked, "nobody@example.com": locked}  # no enumeration
    # The right code is refused too while the cap holds: it stops guessing.
    code = h.code_for(member.email)
    assert status_of(h.accounts.SignIn, a.SignInRequest(email=member.email, code=code)) == locked
    # A day after the first counted failure the cap lifts.
    h.clock.advance(dt.timedelta(hours=24))
    code = h.code_for(member.email)
    assert h.accounts.SignIn(a.SignInRequest(email=member.email, code=code)).account.id == member.account_id


def test_the_account_purge_takes_the_counted_wrong_codes_with_it(harness):
    import dataclasses

    from faceharmony.core.blobstore.base import Role
    from faceharmony.core.blobstore.local import LocalBlobStore
    from faceharmony.retention.daemon import Retention

    h = harness
    member = h.sign_up("forgetful@example.com")
    wrong_codes(h, member.email, 2)
    key = "code-fail:" + h.api.app.hasher.email(member.email)
    assert h.db_call(m.RateLimitHit.select().where(m.RateLimitHit.key == key).count) == 2
    deleted = h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=member.email), metadata=member.md).account
    # Rate-limit rows expire after a day anyway: move the window so only the account purge can take them.
    settings = dataclasses.replace(h.settings, code_request_window_seconds=60 * 24 * 3600)
    h.clock.set(deleted.purge_after.ToDatetime(tzinfo=dt.UTC) + dt.timedelta(seconds=1))
    retention = Retention(settings, h.db, LocalBlobStore(h.settings.blob_dir, Role.RETENTION), clock=h.clock)
    assert h.db_call(retention.run_once)["accounts"] == 1
    assert h.db_call(m.RateLimitHit.select().where(m.RateLimitHit.key == key).count) == 0
