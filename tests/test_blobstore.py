"""The blob-store contract, run against both backends (local folder, GCS through its emulator): random ids, create-only, the storage-role table enforced, content sealed with the owner's key, atomic private files locally, and the orphan sweep."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest

from faceharmony.core.blobstore.base import KINDS, PERMISSIONS, BlobNotFound, BlobPermissionError, Op, Role
from faceharmony.core.blobstore.gcs import GcsBlobStore
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.keys.errors import CiphertextInvalid
from tests.support.keyrings import make_keyring


@pytest.fixture
def kr(tmp_path):
    return make_keyring(tmp_path / "keys")


@pytest.fixture
def key(kr):
    return kr.new_key()


@pytest.fixture(params=["local", "gcs"])
def open_store(request, tmp_path, kr):
    """open_store(role) -> a store of the chosen backend; all roles share one root/bucket and one keyring."""
    if request.param == "local":
        return lambda role: LocalBlobStore(tmp_path / "blobs", role, kr)
    emulator = request.getfixturevalue("gcs_emulator")
    bucket = emulator.new_bucket()
    client = emulator.client()
    return lambda role: GcsBlobStore(client, bucket, role, kr)


def test_roles_can_do_exactly_what_the_table_says(open_store, key):
    stores = {role: open_store(role) for role in Role}
    seeded = {kind: next(r for r in Role if Op.CREATE in PERMISSIONS[r].get(kind, ())) for kind in KINDS}
    for kind in KINDS:
        blob_id = stores[seeded[kind]].create(kind, b"seed-" + kind.encode(), key_id=key)
        for role, store in stores.items():
            allowed = PERMISSIONS[role].get(kind, frozenset())
            attempts = {
                Op.CREATE: lambda store=store, kind=kind: store.create(kind, b"x", key_id=key),
                Op.READ: lambda store=store, kind=kind, blob_id=blob_id: store.read(kind, blob_id, key_id=key),
                Op.LIST: lambda store=store, kind=kind: list(store.list(kind)),
            }
            for op, attempt in attempts.items():
                if op in allowed:
                    attempt()
                else:
                    with pytest.raises(BlobPermissionError):
                        attempt()
            if Op.DELETE not in allowed:
                with pytest.raises(BlobPermissionError):
                    store.delete(kind, blob_id)
    # the table itself, as ARCHITECTURE.md states it
    assert PERMISSIONS[Role.API] == {"photos": {Op.CREATE}, "generated": {Op.READ}}
    assert PERMISSIONS[Role.TRAINER] == {"photos": {Op.READ}, "models": {Op.CREATE}}
    assert PERMISSIONS[Role.ORDER] == {"models": {Op.READ}, "generated": {Op.CREATE}}
    assert all(PERMISSIONS[Role.RETENTION][k] == {Op.DELETE, Op.LIST} for k in KINDS)
    assert all(PERMISSIONS[Role.MIGRATION][k] == {Op.READ, Op.CREATE, Op.DELETE} for k in KINDS)
    for role in Role:  # only the migration role reseals
        if role is not Role.MIGRATION:
            with pytest.raises(BlobPermissionError):
                stores[role].reseal("photos", blob_id, key_id=key)


def test_create_read_delete_round_trip(open_store, key):
    api, trainer, retention = open_store(Role.API), open_store(Role.TRAINER), open_store(Role.RETENTION)
    payload = os.urandom(200_000)
    blob_id = api.create("photos", payload, "image/jpeg", key_id=key)
    assert len(blob_id) == 32 and int(blob_id, 16) >= 0
    assert trainer.read("photos", blob_id, key_id=key) == payload
    listed = {info.blob_id: info for info in retention.list("photos")}
    assert listed[blob_id].size == len(payload) + 32  # sealed: magic, nonce and tag around the content
    assert abs(listed[blob_id].created - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert retention.delete("photos", blob_id) is True
    assert retention.delete("photos", blob_id) is False  # idempotent
    with pytest.raises(BlobNotFound):
        trainer.read("photos", blob_id, key_id=key)


def test_ids_are_random_and_never_chosen_by_callers(open_store, key):
    api, trainer = open_store(Role.API), open_store(Role.TRAINER)
    made = {api.create("photos", b"p", key_id=key) for _ in range(20)}
    assert len(made) == 20
    for bad in ("../secret", "photos/x", "", "A" * 32):
        with pytest.raises(ValueError):
            trainer.read("photos", bad, key_id=key)
    with pytest.raises(ValueError):
        api.create("elsewhere", b"x", key_id=key)
    for bad_key in ("", "../k", "A" * 32):
        with pytest.raises(ValueError):
            api.create("photos", b"x", key_id=bad_key)


def test_a_blob_opens_only_with_its_owners_key(open_store, kr, key):
    api, trainer = open_store(Role.API), open_store(Role.TRAINER)
    blob_id = api.create("photos", b"\xff\xd8 a photo", "image/jpeg", key_id=key)
    with pytest.raises(CiphertextInvalid):
        trainer.read("photos", blob_id, key_id=kr.new_key())


def test_local_files_are_private_and_written_atomically(tmp_path, kr, key):
    store = LocalBlobStore(tmp_path / "blobs", Role.API, kr)
    blob_id = store.create("photos", b"data", key_id=key)
    path = tmp_path / "blobs" / "photos" / blob_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(os.listdir(path.parent)) == [blob_id]  # no temporary file left


def test_local_write_failure_leaves_nothing(tmp_path, monkeypatch, kr, key):
    import errno

    from faceharmony.core.blobstore.base import BlobError

    store = LocalBlobStore(tmp_path / "blobs", Role.API, kr)
    store.create("photos", b"warm-up", key_id=key)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", disk_full)
    with pytest.raises(BlobError):
        store.create("photos", b"x" * 1000, key_id=key)
    assert len(os.listdir(tmp_path / "blobs" / "photos")) == 1  # only the warm-up blob: no partial file


def test_gcs_soft_delete_is_reported(gcs_emulator, caplog):
    store = GcsBlobStore(gcs_emulator.client(), gcs_emulator.new_bucket(), Role.RETENTION)
    with caplog.at_level("WARNING"):
        assert store.soft_delete_seconds() == 7 * 24 * 3600  # GCS's default policy, which the emulator mirrors
    assert "soft delete is on" in caplog.text


def test_a_local_delete_is_final(tmp_path):
    assert LocalBlobStore(tmp_path / "blobs", Role.RETENTION).soft_delete_seconds() == 0
    assert LocalBlobStore(tmp_path / "blobs", Role.RETENTION).keeps_deleted_versions() is False


def test_gcs_object_versioning_is_seen(gcs_emulator, caplog):
    """A versioned bucket keeps a noncurrent copy of every deleted object. The emulator stores a bucket's
    `versioning` field (buckets.patch, as on GCS) without keeping noncurrent copies, so this proves the store
    reads the real field over the real API, not the emulator's deletes."""
    client, name = gcs_emulator.client(), gcs_emulator.new_bucket()
    store = GcsBlobStore(client, name, Role.RETENTION)
    with caplog.at_level("ERROR"):
        assert store.keeps_deleted_versions() is False
    assert "versioning" not in caplog.text
    bucket = client.get_bucket(name)
    bucket.versioning_enabled = True
    bucket.patch()
    with caplog.at_level("ERROR"):
        assert store.keeps_deleted_versions() is True
    assert "object versioning is on" in caplog.text


def test_opening_the_gcs_store_reads_no_bucket_metadata(gcs_emulator, monkeypatch):
    """Only the retention daemon reads the soft-delete policy (storage.buckets.get); the other roles lack the grant."""
    import dataclasses

    from faceharmony.core.blobstore.factory import open_blob_store
    from faceharmony.core.settings import Settings

    def forbidden(*args, **kwargs):
        raise AssertionError("the bucket's metadata was read")

    monkeypatch.setattr(GcsBlobStore, "soft_delete_seconds", forbidden)
    monkeypatch.setattr(GcsBlobStore, "keeps_deleted_versions", forbidden)
    settings = dataclasses.replace(
        Settings(), blob_backend="gcs", gcs_bucket=gcs_emulator.new_bucket(), gcs_endpoint=gcs_emulator.endpoint
    )
    for role in Role:
        assert open_blob_store(settings, role).backend == "gcs"
