"""Photo uploads (P6-P11) through the running server with the real local verifier: exactly one face, nothing unsafe, nothing stored on rejection, private least-privilege storage."""

from __future__ import annotations

import concurrent.futures
import io
import os
import tempfile

import grpc
import pytest
from PIL import Image

from faceharmony.core.blobstore.base import BlobError, Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.db import models as m
from faceharmony.core.verify.base import VerifierUnavailable
from faceharmony.retention.orphans import sweep_orphan_blobs
from faceharmony.v1 import photo_pb2 as p
from tests.support import images
from tests.support.harness import start_harness, status_of


def blob_files(h) -> list[str]:
    folder = h.settings.blob_dir / "photos"
    return sorted(os.listdir(folder)) if folder.exists() else []


def state(h) -> tuple:
    """Everything an upload could leave behind: rows, blobs, temporary files (use with `private_tmp`)."""
    rows = h.db_call(lambda: sorted(r.id for r in m.Photo.select()))
    return rows, blob_files(h), sorted(os.listdir(tempfile.gettempdir()))


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temporary folder of its own, so a stray temporary file would show."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def upload(h, user, content: bytes, **kwargs):
    return h.photos.UploadPhoto(p.UploadPhotoRequest(content=content, **kwargs), metadata=user.md)


def test_a_single_face_photo_is_accepted_and_stored_stripped(harness, private_tmp):
    user = harness.sign_up("photo@example.com")
    photo = upload(harness, user, images.with_exif_gps_and_rotation(), filename="me.jpg").photo
    assert (photo.width, photo.height) == (512, 400)  # EXIF orientation applied
    assert not photo.model_id and photo.HasField("expire_time")
    listed = harness.photos.ListPhotos(p.ListPhotosRequest(), metadata=user.md).photos
    assert [x.id for x in listed] == [photo.id]
    row = harness.db_call(lambda: m.Photo.get_by_id(photo.id))
    assert row.blob_id != photo.id and blob_files(harness) == [row.blob_id]
    stored = LocalBlobStore(harness.settings.blob_dir, Role.TRAINER).read("photos", row.blob_id, key_id=row.key_id)
    image = Image.open(io.BytesIO(stored))
    assert image.format == "JPEG" and image.size == (512, 400)
    assert not image.getexif() and b"SecretCam" not in stored and "icc_profile" not in image.info
    assert os.listdir(private_tmp) == []


@pytest.mark.parametrize(
    "make,reason",
    [
        (images.two_faces, "MULTIPLE_FACES"),
        (images.no_face, "NO_FACE"),
        (images.cat, "NO_FACE"),
        (images.grayscale, "NOT_RGB"),
        (images.grayscale_saved_as_rgb, "NOT_RGB"),
        (images.truncated, "UNDECODABLE_IMAGE"),
        (images.decompression_bomb, "IMAGE_TOO_LARGE"),
        (lambda: images.oversized(10 * 1024 * 1024), "IMAGE_TOO_LARGE"),
        (lambda: b"", "EMPTY_UPLOAD"),
        (lambda: b"GIF89a" + b"\0" * 100, "UNDECODABLE_IMAGE"),
        (lambda: images.encode(images.astronaut().resize((100, 100))), "IMAGE_TOO_SMALL"),
        (lambda: images.encode(images.astronaut().convert("CMYK")), "NOT_RGB"),
        (lambda: images.encode(images.astronaut().convert("P"), "PNG"), "NOT_RGB"),
        (lambda: images.encode(images.astronaut().convert("RGBA").resize((300, 300)).rotate(30), "PNG"), "NOT_RGB"),
    ],
    ids=[
        "two-faces",
        "no-face",
        "cat",
        "grayscale",
        "gray-as-rgb",
        "truncated",
        "bomb",
        "oversized",
        "empty",
        "gif",
        "small",
        "cmyk",
        "palette",
        "transparent",
    ],
)
def test_rejections_name_their_reason_and_leave_nothing(harness, private_tmp, make, reason):
    user = harness.sign_up("reject@example.com")
    before = state(harness)
    code, got = status_of(upload, harness, user, make())
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert state(harness) == before
    assert os.listdir(private_tmp) == []


def test_an_empty_upload_has_its_own_reason(harness, private_tmp):
    """No bytes at all: an empty `content`, and a request that is zero bytes on the wire (no field set)."""
    user = harness.sign_up("empty@example.com")
    before = state(harness)
    assert status_of(upload, harness, user, b"", filename="me.jpg") == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "EMPTY_UPLOAD",
    )
    raw = harness.channel.unary_unary("/faceharmony.v1.PhotoService/UploadPhoto")
    assert status_of(raw, b"", metadata=user.md) == (grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_UPLOAD")
    assert state(harness) == before


def test_overlong_metadata_fields_are_refused(harness):
    user = harness.sign_up("longname@example.com")
    assert status_of(upload, harness, user, images.one_face(), filename="x" * 300) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )


def test_opaque_rgba_is_accepted(harness):
    user = harness.sign_up("rgba@example.com")
    photo = upload(harness, user, images.encode(images.astronaut().convert("RGBA"), "PNG")).photo
    assert (photo.width, photo.height) == (512, 512)


def test_photos_are_invisible_to_other_users(harness):
    owner, other = harness.sign_up("owner@example.com"), harness.sign_up("nosy@example.com")
    photo = upload(harness, owner, images.one_face()).photo
    assert harness.photos.ListPhotos(p.ListPhotosRequest(), metadata=other.md).photos == []
    assert status_of(harness.photos.DeletePhoto, p.DeletePhotoRequest(id=photo.id), metadata=other.md) == (
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    assert [x.id for x in harness.photos.ListPhotos(p.ListPhotosRequest(), metadata=owner.md).photos] == [photo.id]


def test_delete_hides_unattached_photos_only(harness):
    user = harness.sign_up("deleter@example.com")
    keep, drop = upload(harness, user, images.one_face()).photo, upload(harness, user, images.one_face()).photo
    harness.photos.DeletePhoto(p.DeletePhotoRequest(id=drop.id), metadata=user.md)
    assert [x.id for x in harness.photos.ListPhotos(p.ListPhotosRequest(), metadata=user.md).photos] == [keep.id]
    assert (
        status_of(harness.photos.DeletePhoto, p.DeletePhotoRequest(id=drop.id), metadata=user.md)[0]
        == grpc.StatusCode.NOT_FOUND
    )
    harness.db_call(lambda: m.Photo.update(model_id="f" * 32).where(m.Photo.id == keep.id).execute())
    assert status_of(harness.photos.DeletePhoto, p.DeletePhotoRequest(id=keep.id), metadata=user.md) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PHOTO_IN_USE",
    )
    assert status_of(harness.photos.DeletePhoto, p.DeletePhotoRequest(id="nope"), metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ID",
    )
    # A real id with a trailing newline is not an id (a `$` anchor alone would let it through).
    assert status_of(harness.photos.DeletePhoto, p.DeletePhotoRequest(id=keep.id + "\n"), metadata=user.md) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ID",
    )


def test_request_id_makes_uploads_idempotent(harness):
    user = harness.sign_up("idem@example.com")
    first = upload(harness, user, images.one_face(), request_id="upload-1").photo
    again = upload(harness, user, images.one_face(), request_id="upload-1").photo
    assert first.id == again.id and len(blob_files(harness)) == 1


def test_unavailable_verifier_stores_nothing(tmp_path, private_tmp):
    class Down:
        name = "down"

        def verify(self, image):
            raise VerifierUnavailable("service down")

    h = start_harness(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite3'}", verifier=Down())
    try:
        user = h.sign_up("down@example.com")
        before = state(h)
        assert status_of(upload, h, user, images.one_face()) == (grpc.StatusCode.UNAVAILABLE, "VERIFIER_UNAVAILABLE")
        assert state(h) == before
    finally:
        h.stop()


def test_blob_store_failure_mid_upload_leaves_no_row(tmp_path, private_tmp):
    class FailingStore(LocalBlobStore):
        def _create(self, kind, blob_id, data, content_type):
            raise BlobError("disk on fire")

    h = start_harness(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        photo_store=FailingStore(tmp_path / "data" / "blobs", Role.API),
    )
    try:
        user = h.sign_up("blobfail@example.com")
        assert status_of(upload, h, user, images.one_face()) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
        assert state(h)[:2] == ([], [])
    finally:
        h.stop()


def test_database_failure_after_the_blob_write_leaves_an_orphan_that_the_sweep_removes(tmp_path):
    import datetime as dt

    class BreaksDatabaseAfterWrite(LocalBlobStore):
        """Writes the blob, then the database goes away (as in an outage between the two steps)."""

        armed = False

        def _create(self, kind, blob_id, data, content_type):
            super()._create(kind, blob_id, data, content_type)
            if self.armed:
                m.Photo._meta.database.obj.execute_sql("ALTER TABLE photo RENAME TO photo_gone")

    store = BreaksDatabaseAfterWrite(tmp_path / "data" / "blobs", Role.API)
    h = start_harness(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite3'}", photo_store=store)
    try:
        user = h.sign_up("dbfail@example.com")
        kept = upload(h, user, images.one_face()).photo
        store.armed = True
        try:
            assert status_of(upload, h, user, images.one_face()) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
        finally:
            store.armed = False
            h.db_call(lambda: m.Photo._meta.database.obj.execute_sql("ALTER TABLE photo_gone RENAME TO photo"))
        kept_blob = h.db_call(lambda: m.Photo.get_by_id(kept.id).blob_id)
        assert h.db_call(m.Photo.select().count) == 1
        assert len(blob_files(h)) == 2  # the orphan exists...
        retention = LocalBlobStore(h.settings.blob_dir, Role.RETENTION)
        real_now = dt.datetime.now(dt.UTC)
        assert h.db_call(sweep_orphan_blobs, h.db, retention, real_now) == {
            "photos": 0,
            "models": 0,
            "generated": 0,
        }  # ...inside the safety margin: kept
        assert h.db_call(sweep_orphan_blobs, h.db, retention, real_now + dt.timedelta(hours=7)) == {
            "photos": 1,
            "models": 0,
            "generated": 0,
        }
        assert blob_files(h) == [kept_blob]  # the photo with a row is untouched
    finally:
        h.stop()


def test_many_uploads_from_many_users_at_once(harness):
    users = [harness.sign_up(f"crowd{i}@example.com") for i in range(4)]
    payloads = {"ok": images.one_face(), "two": images.two_faces()}
    jobs = [(users[i % 4], "ok" if i % 3 else "two") for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda job: status_of(upload, harness, job[0], payloads[job[1]]), jobs))
    expected = [
        (grpc.StatusCode.OK, "") if kind == "ok" else (grpc.StatusCode.INVALID_ARGUMENT, "MULTIPLE_FACES")
        for _, kind in jobs
    ]
    assert results == expected
    accepted = sum(1 for _, kind in jobs if kind == "ok")
    assert harness.db_call(m.Photo.select().count) == accepted == len(blob_files(harness))
    for user in users:
        mine = harness.photos.ListPhotos(p.ListPhotosRequest(), metadata=user.md).photos
        assert len(mine) == sum(1 for u, kind in jobs if u is user and kind == "ok")


def test_per_account_photo_limit(tmp_path):
    h = start_harness(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite3'}", max_photos_per_account=2)
    try:
        user = h.sign_up("limit@example.com")
        upload(h, user, images.one_face())
        upload(h, user, images.one_face())
        assert status_of(upload, h, user, images.one_face()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    finally:
        h.stop()


def test_google_cloud_vision_backend_through_the_server(tmp_path, private_tmp):
    """The production verifier, configured by settings, speaking Vision's real protocol to a local Vision server."""
    from faceharmony.core.settings import Settings
    from faceharmony.core.verify.factory import make_verifier
    from tests.support.fake_vision import FakeVision

    with FakeVision() as vision:
        settings = Settings(verifier="google-cloud-vision", vision_endpoint=vision.address, vision_timeout_seconds=10)
        h = start_harness(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite3'}", verifier=make_verifier(settings))
        try:
            user = h.sign_up("vision@example.com")
            vision.faces = [0.98, 0.91]
            assert status_of(upload, h, user, images.one_face()) == (grpc.StatusCode.INVALID_ARGUMENT, "MULTIPLE_FACES")
            vision.faces = [0.98]
            vision.safe_search = {"adult": "VERY_LIKELY"}
            assert status_of(upload, h, user, images.one_face()) == (grpc.StatusCode.INVALID_ARGUMENT, "NSFW")
            vision.safe_search = {}
            photo = upload(h, user, images.with_exif_gps_and_rotation()).photo
            sent = vision.requests[-1].requests[0].image.content
            row = h.db_call(lambda: m.Photo.get_by_id(photo.id))
            assert sent == LocalBlobStore(h.settings.blob_dir, Role.TRAINER).read(
                "photos", row.blob_id, key_id=row.key_id
            )
            assert b"SecretCam" not in sent  # only the stripped patch leaves the server
            vision.fail_always = grpc.StatusCode.UNAVAILABLE
            before = state(h)
            assert status_of(upload, h, user, images.one_face()) == (
                grpc.StatusCode.UNAVAILABLE,
                "VERIFIER_UNAVAILABLE",
            )
            assert state(h) == before
        finally:
            h.stop()


def test_gcs_blob_backend_through_the_server(tmp_path, gcs_emulator):
    from faceharmony.core.blobstore.gcs import GcsBlobStore

    bucket = gcs_emulator.new_bucket()
    h = start_harness(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        blob_backend="gcs",
        gcs_bucket=bucket,
        gcs_endpoint=gcs_emulator.endpoint,
    )
    try:
        user = h.sign_up("gcs@example.com")
        photo = upload(h, user, images.one_face()).photo
        row = h.db_call(lambda: m.Photo.get_by_id(photo.id))
        blob_id = row.blob_id
        trainer = GcsBlobStore(gcs_emulator.client(), bucket, Role.TRAINER)
        assert Image.open(io.BytesIO(trainer.read("photos", blob_id, key_id=row.key_id))).size == (512, 512)
        assert status_of(upload, h, user, images.two_faces()) == (grpc.StatusCode.INVALID_ARGUMENT, "MULTIPLE_FACES")
        assert [b.blob_id for b in GcsBlobStore(gcs_emulator.client(), bucket, Role.RETENTION).list("photos")] == [
            blob_id
        ]
    finally:
        h.stop()
