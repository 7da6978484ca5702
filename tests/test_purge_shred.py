"""Issue 12 end to end: personal data is never stored in plaintext, and a purge shreds it everywhere.

On SQLite (file, WAL and shared memory) and on PostgreSQL (the data directory and WAL after a CHECKPOINT,
the server log included), with blobs, KEK and key store in the data folder, or with blobs in the GCS
emulator's bucket, the KEK in a local server speaking Cloud KMS's protocol and the key store in a bucket
of its own, every byte the
system keeps is scanned for a person's email, name, note, ticket text, invitee's email and name, model name
and photo content: no hit during normal use. After the account's purge, what ciphertext remains (a copy
taken before the purge) opens with nothing the system still holds; a backup of the key store taken before
the purge still opens it until the KEK rotation window has passed, and not afterwards.

The email outbox (<data dir>/outbox, the embedded stand-in for an SMTP server) is left out of the scan: it
plays the part of the recipients' mailboxes, the mail already sent (README, Retention).
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

import pytest

from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.factory import open_blob_store
from faceharmony.core.clock import ManualClock
from faceharmony.core.db import models as m
from faceharmony.core.keys import aead
from faceharmony.core.keys.errors import CiphertextInvalid, KekMissing, KeyShredded
from faceharmony.core.keys.gcs_store import GcsKeyStore
from faceharmony.core.keys.keyring import Keyring
from faceharmony.core.keys.store import SqliteKeyStore
from faceharmony.retention.daemon import Retention
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import photo_pb2 as p
from faceharmony.v1 import support_pb2 as s
from tests.support import images
from tests.support.harness import start_harness

DAY = dt.timedelta(days=1)


def real_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def files_under(*roots: Path, skip: tuple[Path, ...] = ()) -> dict[Path, bytes]:
    found = {}
    for root in roots:
        if root.is_file():
            found[root] = root.read_bytes()
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not any(path.is_relative_to(x) for x in skip):
                try:
                    found[path] = path.read_bytes()
                except (FileNotFoundError, PermissionError):  # a file PostgreSQL removed meanwhile
                    continue
    return found


class Scanner:
    """Every byte the system keeps, for the test's backend: files, the database's, and the bucket's objects."""

    def __init__(
        self, h, database_url: str, pg_cluster=None, bucket_client=None, buckets: tuple[str, ...] = ()
    ) -> None:
        self.h = h
        self.database_url = database_url
        self.pg_cluster = pg_cluster
        self.bucket_client = bucket_client
        self.buckets = buckets

    def places(self) -> dict[str, bytes]:
        data_dir = self.h.settings.data_dir
        roots = [data_dir]
        if self.database_url.startswith("sqlite:///"):
            db_file = Path(self.database_url.removeprefix("sqlite:///"))
            roots += [x for x in (db_file, Path(f"{db_file}-wal"), Path(f"{db_file}-shm")) if x.exists()]
        else:
            conn = self.pg_cluster.admin_connection()
            try:
                with conn.cursor() as cur:
                    cur.execute("CHECKPOINT")  # the table files hold what the WAL held
            finally:
                conn.close()
            roots.append(self.pg_cluster.root)  # data directory, pg_wal, and the server log
        found = {str(path): data for path, data in files_under(*roots, skip=(data_dir / "outbox",)).items()}
        for name in self.buckets:  # the blob bucket and the key bucket
            for blob in self.bucket_client.bucket(name).list_blobs():
                found[f"gs://{name}/{blob.name}"] = blob.download_as_bytes()
        return found

    def hits(self, needles: dict[str, bytes]) -> list[tuple[str, str]]:
        return sorted(
            (label, place)
            for place, data in self.places().items()
            for label, needle in needles.items()
            if needle in data
        )


def slices(data: bytes, n: int = 3, size: int = 48) -> list[bytes]:
    """Distinctive pieces from the middle of an image's bytes (past any header)."""
    step = len(data) // (n + 1)
    return [data[step * (i + 1) : step * (i + 1) + size] for i in range(n)]


def backup_key_store(keyring: Keyring, tmp_path: Path, request) -> SqliteKeyStore | GcsKeyStore:
    """A copy of the key store as a backup keeps it: the SQLite file, or every object of the key bucket."""
    if isinstance(keyring.store, SqliteKeyStore):
        target = tmp_path / "keystore-backup.sqlite3"
        shutil.copyfile(keyring.store.path, target)
        return SqliteKeyStore(target)
    emulator = request.getfixturevalue("gcs_emulator")
    copy = GcsKeyStore(emulator.client(), emulator.new_key_bucket())
    for stored in keyring.store.list():
        copy.put(stored)
    return copy


@pytest.fixture(params=["local", "gcs"])
def blob_backend(request):
    return request.param


def test_personal_data_is_never_stored_in_plaintext_and_a_purge_shreds_it(
    request, database_url, blob_backend, tmp_path
):
    overrides: dict = {}
    bucket_client = None
    bucket = ""
    if blob_backend == "gcs":
        if not database_url.startswith("sqlite"):
            pytest.skip("the GCS variant runs once, on SQLite")
        # Production's parts: blobs in a bucket, the KEK in (a local server speaking) Cloud KMS, the wrapped
        # keys in a bucket of their own.
        emulator = request.getfixturevalue("gcs_emulator")
        kms = request.getfixturevalue("fake_kms")
        bucket = emulator.new_bucket()
        bucket_client = emulator.client()
        overrides = {
            "blob_backend": "gcs",
            "gcs_bucket": bucket,
            "gcs_endpoint": emulator.endpoint,
            "kek_provider": "gcp-kms",
            "kms_key_name": kms.create_key(key=f"kek-{uuid.uuid4().hex[:8]}"),
            "kms_endpoint": kms.address,
            "key_store": "gcs",
            "key_store_bucket": emulator.new_key_bucket(),
        }
    h = start_harness(tmp_path / "data", database_url, **overrides)
    pg = None if database_url.startswith("sqlite") else request.getfixturevalue("pg_cluster")
    scanner = Scanner(h, database_url, pg, bucket_client, (bucket, overrides["key_store_bucket"]) if bucket else ())
    try:
        tag = uuid.uuid4().hex[:10]
        email = f"zelda.quartz.{tag}@example.com"
        name = f"Zelda Quartz-{tag}"
        new_name = f"Zelda Q. Marlowe-{tag}"
        note = f"found you through my cousin {tag}"
        friend_email = f"friend.{tag}@example.org"
        friend_name = f"Friendly Fennimore {tag}"
        ticket_text = f"my card was charged twice {tag}"
        model_name = f"Portrait of Zelda {tag}"

        other = h.sign_up(f"still.here.{tag}@example.com", "Still Here")
        h.accounts.JoinWaitlist(a.JoinWaitlistRequest(name=name, email=email, is_16_or_older=True, note=note))
        user = h.sign_up(email, name)  # joins again (idempotent), is approved, signs in
        h.accounts.UpdateName(a.UpdateNameRequest(name=new_name), metadata=user.md)
        h.accounts.InviteFriend(a.InviteFriendRequest(email=friend_email, name=friend_name), metadata=user.md)
        h.support.CreateTicket(s.CreateTicketRequest(subject=ticket_text, body=ticket_text), metadata=user.md)
        upload = images.one_face()
        photo_ids = [
            h.photos.UploadPhoto(p.UploadPhotoRequest(content=upload), metadata=user.md).photo.id for _ in range(4)
        ]
        h.models.CreateModel(mp.CreateModelRequest(display_name=model_name, photo_ids=photo_ids), metadata=user.md)
        h.deliver_emails()

        keyring = h.api.app.keyring if hasattr(h.api.app, "keyring") else None
        from faceharmony.core.keys.keyring import keyring as installed

        keyring = keyring or installed.obj
        account = h.db_call(m.Account.get_by_id, user.account_id)
        key_id = account.key_id
        photo = h.db_call(lambda: m.Photo.select().where(m.Photo.account == user.account_id).first())
        trainer_store = open_blob_store(h.settings, Role.TRAINER)
        stored_photo = trainer_store.read("photos", photo.blob_id, key_id=photo.key_id)  # what the trainer sees

        needles = {
            "email": email.encode(),
            "name": name.encode(),
            "new name": new_name.encode(),
            "note": note.encode(),
            "friend email": friend_email.encode(),
            "friend name": friend_name.encode(),
            "ticket": ticket_text.encode(),
            "model name": model_name.encode(),
        }
        for i, piece in enumerate(slices(upload) + slices(stored_photo)):
            needles[f"photo bytes {i}"] = piece
        assert scanner.hits(needles) == []  # during normal use: nowhere, in no file, WAL, log or object

        # What a copy of the data keeps (a WAL segment, a backup, a soft-deleted object): the sealed bytes.
        sealed_email = h.db_call(
            lambda: bytes(m.Account.select(m.Account.email_sealed).where(m.Account.id == user.account_id).scalar())
        )
        email_aad = aead.field_aad("account", "email", user.account_id, key_id)
        sealed_photo_places = {k: v for k, v in scanner.places().items() if photo.blob_id in k}
        [sealed_photo] = sealed_photo_places.values()
        photo_aad = aead.blob_aad("photos", photo.blob_id, photo.key_id)
        assert keyring.open_text(key_id, sealed_email, email_aad) == email
        assert keyring.open(photo.key_id, sealed_photo, photo_aad) == stored_photo
        backup = backup_key_store(keyring, tmp_path, request)  # the operator's nightly backup, before the purge
        wrapped_before = keyring.store.get(key_id).wrapped

        # The purge, 30 days after the deletion.
        h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=email), metadata=user.md)
        h.clock.advance(31 * DAY)
        daemon = Retention(h.settings, h.db, open_blob_store(h.settings, Role.RETENTION), clock=h.clock)
        purged = h.db_call(daemon.run_once, h.clock.now(), True)
        assert purged["accounts"] == 1 and purged["data_keys"] == 1 + 4 + 1  # the person, 4 photos, the invitee

        assert not keyring.exists(key_id) and not keyring.exists(photo.key_id)  # the person's and the photo's
        keyring.forget_cached()
        with pytest.raises(KeyShredded):
            keyring.open(photo.key_id, sealed_photo, photo_aad)
        # Nothing the system still holds opens it: no data key in the store, unwrapped by any KEK version.
        for stored in keyring.store.list():
            dek = keyring.kek.unwrap(stored.wrapped, aead.wrap_aad(stored.key_id), stored.kek_version)
            for sealed, aad in ((sealed_email, email_aad), (sealed_photo, photo_aad)):
                with pytest.raises(CiphertextInvalid):
                    aead.open_sealed(dek, sealed, aad)
        # The key store keeps no copy of the deleted wrapped key (SQLite: secure_delete, no WAL; a bucket without
        # soft delete or versioning), and nothing the system keeps holds the plaintext.
        assert not any(wrapped_before in data for data in scanner.places().values())
        if isinstance(keyring.store, SqliteKeyStore):
            path = keyring.store.path
            assert not Path(f"{path}-wal").exists() and not Path(f"{path}-journal").exists()
        assert scanner.hits(needles) == []

        # A backup of the key store taken before the purge still opens the data until the KEK version that
        # wrapped its key is destroyed ...
        kek = keyring.kek
        from_backup = Keyring(kek, backup)
        assert from_backup.open_text(key_id, sealed_email, email_aad) == email
        # ... which the rotation does once that version was replaced more than the backup window ago.
        window = dt.timedelta(days=h.settings.kek_rotation_days + h.settings.backup_window_days)
        rotated = Retention(
            h.settings, h.db, open_blob_store(h.settings, Role.RETENTION), clock=ManualClock(real_now() + 8 * DAY)
        )
        h.db_call(rotated.run_once, h.clock.now(), True)
        assert rotated.metrics.total("kek_rotations_total") == 1
        from_backup.forget_cached()
        assert from_backup.open_text(key_id, sealed_email, email_aad) == email  # inside the window: still opens
        later = Retention(
            h.settings, h.db, open_blob_store(h.settings, Role.RETENTION), clock=ManualClock(real_now() + window + DAY)
        )
        h.db_call(later.run_once, h.clock.now(), True)
        assert later.metrics.total("kek_versions_destroyed_total") >= 1
        from_backup.forget_cached()
        with pytest.raises(KekMissing):
            from_backup.open_text(key_id, sealed_email, email_aad)
        backed_up = backup.get(key_id)
        for version in kek.versions():  # and no KEK version that exists opens the backed-up wrapped key
            with pytest.raises((CiphertextInvalid, KekMissing)):
                kek.unwrap(backed_up.wrapped, aead.wrap_aad(key_id), version.name)
        # The others' data keys were rewrapped with the new primary and still open.
        keyring.forget_cached()
        assert h.db_call(lambda: m.Account.get_by_id(other.account_id).name) == "Still Here"
    finally:
        h.stop()
