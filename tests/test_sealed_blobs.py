"""Blobs sealed with their owner's data key (issue 12): on the local folder and on GCS (its emulator) no stored
byte of a photo, adapter, metadata or generated image is plaintext; a blob opens only with its owner's key, at
its own kind and id; and the reseal step turns the plaintext blobs of an older install into sealed ones,
idempotently and resumably."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from faceharmony.core.blobstore.base import BlobNotFound, BlobStore, Role
from faceharmony.core.blobstore.gcs import GcsBlobStore
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.keys import aead
from faceharmony.core.keys.errors import CiphertextInvalid, KeyShredded
from faceharmony.order_worker.worker import encode
from tests.support import images
from tests.support.keyrings import make_keyring

SLICE = 48  # a long distinctive run of the plaintext's bytes


def distinctive(data: bytes) -> list[bytes]:
    """Three slices of `data` (past any fixed header) that a stored copy of it in the clear would contain."""
    n = len(data)
    return [data[at : at + SLICE] for at in (n // 4, n // 2, (3 * n) // 4)]


def sample_blobs() -> dict[str, tuple[str, bytes, str]]:
    """name -> (kind, plaintext, content type): a photo, an adapter, its metadata, a generated PNG and preview."""
    generator = torch.Generator().manual_seed(7)
    tensors = {
        f"unet.down_blocks.0.attentions.0.to_q.lora.{part}.weight": torch.randn(8, 64, generator=generator)
        for part in ("down", "up")
    }
    pixels = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    png, jpeg = encode(pixels, 64)
    metadata = json.dumps({"base_fingerprint": "ab" * 32, "rank": 8, "trigger": "sks person " * 8}).encode()
    return {
        "photo": ("photos", images.one_face(), "image/jpeg"),
        "adapter": ("models", safetensors.torch.save(tensors), "application/octet-stream"),
        "metadata": ("models", metadata, "application/json"),
        "generated": ("generated", png, "image/png"),
        "preview": ("generated", jpeg, "image/jpeg"),
    }


class Backend:
    """A store per role over one local folder or one emulator bucket, and every byte that backend keeps."""

    def __init__(self, name: str, tmp_path: Path, keyring, gcs_emulator=None) -> None:
        self.name, self.keyring = name, keyring
        self.root = tmp_path / "blobs"
        if name == "gcs":
            self.client, self.bucket = gcs_emulator.client(), gcs_emulator.new_bucket()

    def store(self, role: Role) -> BlobStore:
        if self.name == "gcs":
            return GcsBlobStore(self.client, self.bucket, role, self.keyring)
        return LocalBlobStore(self.root, role, self.keyring)

    def everything(self) -> dict[str, bytes]:
        """Every stored object or file (temporary files included): name -> bytes."""
        if self.name == "gcs":
            return {b.name: b.download_as_bytes() for b in self.client.list_blobs(self.bucket)}
        return {str(p.relative_to(self.root)): p.read_bytes() for p in self.root.rglob("*") if p.is_file()}

    def raw_put(self, kind: str, blob_id: str, data: bytes) -> None:
        """Writes bytes as they are (a copy made behind the store's back, or what an old version stored)."""
        self.store(Role.MIGRATION)._create(kind, blob_id, data, "application/octet-stream")

    def raw_get(self, kind: str, blob_id: str) -> bytes:
        return self.store(Role.MIGRATION)._read(kind, blob_id)


@pytest.fixture
def kr(tmp_path):
    return make_keyring(tmp_path / "keys")


@pytest.fixture(params=["local", "gcs"])
def backend(request, tmp_path, kr):
    emulator = request.getfixturevalue("gcs_emulator") if request.param == "gcs" else None
    return Backend(request.param, tmp_path, kr, emulator)


CREATOR = {"photos": Role.API, "models": Role.TRAINER, "generated": Role.ORDER}
READER = {"photos": Role.TRAINER, "models": Role.ORDER, "generated": Role.API}


def test_no_stored_byte_is_plaintext_and_each_blob_reads_back(backend, kr):
    alice = kr.new_key()
    made = {}
    for name, (kind, data, content_type) in sample_blobs().items():
        made[name] = backend.store(CREATOR[kind]).create(kind, data, content_type, key_id=alice)
    stored = backend.everything()
    assert len(stored) == len(made)  # nothing else (no temporary file, no plaintext side copy)
    for name, (kind, data, _) in sample_blobs().items():
        for obj, content in stored.items():
            assert aead.is_sealed(content), obj
            for piece in distinctive(data):
                assert piece not in content, f"{name} found in the clear in {obj}"
        assert backend.store(READER[kind]).read(kind, made[name], key_id=alice) == data


def test_a_blob_opens_only_with_its_owners_key_at_its_own_place(backend, kr):
    alice, bob = kr.new_key(), kr.new_key()
    photo = images.one_face()
    api, trainer, order = backend.store(Role.API), backend.store(Role.TRAINER), backend.store(Role.ORDER)
    blob_id = api.create("photos", photo, "image/jpeg", key_id=alice)
    with pytest.raises(CiphertextInvalid):  # another person's key
        trainer.read("photos", blob_id, key_id=bob)
    sealed = backend.raw_get("photos", blob_id)
    moved = "f" * 32
    backend.raw_put("photos", moved, sealed)  # the sealed bytes copied under another id
    with pytest.raises(CiphertextInvalid):
        trainer.read("photos", moved, key_id=alice)
    backend.raw_put("models", blob_id, sealed)  # ... or under another kind, with the same id
    with pytest.raises(CiphertextInvalid):
        order.read("models", blob_id, key_id=alice)
    tampered = bytearray(sealed)
    tampered[len(tampered) // 2] ^= 1
    backend.raw_put("photos", "e" * 32, bytes(tampered))
    with pytest.raises(CiphertextInvalid):
        trainer.read("photos", "e" * 32, key_id=alice)
    backend.raw_put("photos", "d" * 32, photo)  # a plaintext blob (an older version's) is never returned
    with pytest.raises(CiphertextInvalid):
        trainer.read("photos", "d" * 32, key_id=alice)
    assert trainer.read("photos", blob_id, key_id=alice) == photo
    kr.shred(alice)  # the purge: what the key sealed is gone for good
    with pytest.raises(KeyShredded):
        trainer.read("photos", blob_id, key_id=alice)


def test_the_retention_role_needs_no_key(tmp_path, kr):
    """The retention daemon lists and deletes without a keyring (it never sees content)."""
    alice = kr.new_key()
    blob_id = LocalBlobStore(tmp_path / "blobs", Role.API, kr).create("photos", b"\xff\xd8 photo", key_id=alice)
    retention = LocalBlobStore(tmp_path / "blobs", Role.RETENTION)
    assert [b.blob_id for b in retention.list("photos")] == [blob_id]
    assert retention.delete("photos", blob_id)


def test_the_reseal_copy_is_made_by_the_migration_role_only(backend, kr):
    alice = kr.new_key()
    photo = images.one_face()
    backend.raw_put("photos", "a" * 32, photo)
    migration = backend.store(Role.MIGRATION)
    new_id = migration.reseal("photos", "a" * 32, key_id=alice)
    assert new_id is not None and new_id != "a" * 32
    assert migration.reseal("photos", new_id, key_id=alice) is None  # sealed already
    assert backend.store(Role.TRAINER).read("photos", new_id, key_id=alice) == photo
    assert backend.raw_get("photos", "a" * 32) == photo  # the old one is the caller's to delete
    with pytest.raises(BlobNotFound):
        migration.reseal("photos", "b" * 32, key_id=alice)


# ---------------------------------------------------------------------------------------------------------
# The reseal step over a database whose rows name plaintext blobs (an install from before issue 12)


def _legacy_install(h, backend: Backend):
    """A user with a photo, a trained model version (adapter and metadata) and a generated photo and preview,
    each blob then replaced by its plaintext under a new id, as an older version stored them."""
    from faceharmony.core.db import models as m
    from faceharmony.core.jobs.orders import OrderQueue
    from tests.support.orders import order, ready_model

    user = h.sign_up("legacy@example.com")
    key = h.db_call(lambda: m.Account.get_by_id(user.account_id).key_id)
    blobs = sample_blobs()
    model_id = ready_model(h, user)
    created = order(h, user, [model_id])
    queue = OrderQueue(h.db, h.clock, h.settings.order_lease_seconds)
    claim = h.db_call(queue.claim, "legacy-worker")
    [slot] = h.db_call(queue.pending_slots, claim)
    _, png, _ = blobs["generated"]
    assert h.db_call(queue.record_image, claim, slot, "1" * 32, "2" * 32, "image/png", len(png), 128, 96, key)
    assert created.id == claim.job_id
    from tests.test_photos import upload

    upload(h, user, images.one_face())

    plain: dict[str, bytes] = {}

    def legacy(model, column, kind, name):
        def change():
            row = model.select().get()  # the user's only one (staff own no blobs)
            old = getattr(row, column.name)
            new = os.urandom(16).hex()
            backend.raw_put(kind, new, blobs[name][1])
            # Migration 0008 gave an older install's rows their account's key.
            model.update({column: new, model.key_id: key}).where(model.id == row.id).execute()
            try:
                backend.store(Role.RETENTION).delete(kind, old)
            except Exception:  # noqa: BLE001 - ready_model's ids name no blob
                pass
            plain[name] = blobs[name][1]
            return new

        return h.db_call(change)

    # An install from before issue 12 has not run the reseal step (the harness's start found nothing to seal
    # and recorded the step as done).
    h.db_call(lambda: m.MaintenanceStep.delete().execute())
    names = {
        "photo": legacy(m.Photo, m.Photo.blob_id, "photos", "photo"),
        "adapter": legacy(m.ModelVersion, m.ModelVersion.adapter_blob_id, "models", "adapter"),
        "metadata": legacy(m.ModelVersion, m.ModelVersion.metadata_blob_id, "models", "metadata"),
        "generated": legacy(m.GeneratedPhoto, m.GeneratedPhoto.blob_id, "generated", "generated"),
        "preview": legacy(m.GeneratedPhoto, m.GeneratedPhoto.preview_blob_id, "generated", "preview"),
    }
    return user, key, names, plain


def _row_blobs(h) -> dict[str, tuple[str, str]]:
    """name -> (blob id the row names now, its key id)."""
    from faceharmony.core.db import models as m

    def read():
        p, v, g = m.Photo.get(), m.ModelVersion.get(), m.GeneratedPhoto.get()
        return {
            "photo": (p.blob_id, p.key_id),
            "adapter": (v.adapter_blob_id, v.key_id),
            "metadata": (v.metadata_blob_id, v.key_id),
            "generated": (g.blob_id, g.key_id),
            "preview": (g.preview_blob_id, g.key_id),
        }

    return h.db_call(read)


KIND_OF = {
    "photo": "photos",
    "adapter": "models",
    "metadata": "models",
    "generated": "generated",
    "preview": "generated",
}


@pytest.fixture(params=["local", "gcs", "postgresql"])
def legacy_harness(request, tmp_path):
    """A running server over: the local folder and SQLite, GCS (the emulator) and SQLite, or the local folder
    and PostgreSQL (the throwaway cluster)."""
    from faceharmony.core.keys.keyring import keyring as installed
    from tests.support.harness import start_harness

    overrides = {}
    emulator = None
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    if request.param == "gcs":
        emulator = request.getfixturevalue("gcs_emulator")
    cluster = name = None
    if request.param == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        name = cluster.create_database(template=cluster.template)
        url = cluster.url(name)
    h = None
    try:
        backend = Backend("gcs" if request.param == "gcs" else "local", tmp_path / "data", None, emulator)
        if request.param == "gcs":
            overrides = dict(blob_backend="gcs", gcs_bucket=backend.bucket, gcs_endpoint=emulator.endpoint)
        h = start_harness(tmp_path / "data", url, **overrides)
        backend.keyring = installed.obj  # the server's (install_keyring over the data folder's keys)
        backend.root = h.settings.blob_dir
        yield h, backend
    finally:
        if h is not None:
            h.stop()
        if cluster is not None:
            cluster.drop_database(name)


def test_reseal_seals_every_legacy_blob_once_and_a_rerun_changes_nothing(legacy_harness):
    from faceharmony.core.blobstore.reseal import reseal_legacy_blobs

    h, backend = legacy_harness
    _, key, legacy_ids, plain = _legacy_install(h, backend)
    assert any(not aead.is_sealed(c) for c in backend.everything().values())

    done = h.db_call(reseal_legacy_blobs, h.db, h.settings)
    assert done == {"photos": 1, "models": 2, "generated": 2}
    now = _row_blobs(h)
    stored = backend.everything()
    assert len(stored) == 5 and all(aead.is_sealed(c) for c in stored.values())
    for name, (blob_id, key_id) in now.items():
        assert blob_id != legacy_ids[name] and key_id == key
        for content in stored.values():
            assert not any(piece in content for piece in distinctive(plain[name]))
        assert backend.store(Role.MIGRATION).read(KIND_OF[name], blob_id, key_id=key) == plain[name]

    assert h.db_call(reseal_legacy_blobs, h.db, h.settings) == {"photos": 0, "models": 0, "generated": 0}
    assert _row_blobs(h) == now and backend.everything() == stored
    # The finished pass is recorded: a later start reads no blob at all (a store that refuses everything is fine).
    from faceharmony.core.blobstore import reseal

    assert h.db_call(reseal.done, h.db)
    refusing = backend.store(Role.RETENTION)
    assert h.db_call(lambda: reseal_legacy_blobs(h.db, h.settings, store=refusing)) == {
        "photos": 0,
        "models": 0,
        "generated": 0,
    }


def test_an_interrupted_reseal_finishes_on_the_next_run_and_leaves_only_orphans(legacy_harness, monkeypatch):
    import datetime as dt

    from faceharmony.core.blobstore import reseal
    from faceharmony.retention.orphans import sweep_orphan_blobs

    h, backend = legacy_harness
    _, key, legacy_ids, plain = _legacy_install(h, backend)

    class Killed(BaseException):
        pass

    # Killed twice: once between the copy and the row's update, once between the update and the old blob's delete.
    real_update = reseal.write_transaction
    calls = {"n": 0}

    def dies_before_second_update(db):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return real_update(db)

    monkeypatch.setattr(reseal, "write_transaction", dies_before_second_update)
    with pytest.raises(Killed):
        h.db_call(reseal.reseal_legacy_blobs, h.db, h.settings)
    monkeypatch.undo()

    real_delete = type(backend.store(Role.MIGRATION)).delete

    def dies_on_delete(self, kind, blob_id):
        raise Killed

    monkeypatch.setattr(type(backend.store(Role.MIGRATION)), "delete", dies_on_delete)
    with pytest.raises(Killed):
        h.db_call(reseal.reseal_legacy_blobs, h.db, h.settings)
    monkeypatch.setattr(type(backend.store(Role.MIGRATION)), "delete", real_delete)

    # The rows name a sealed blob or their legacy one: the app never sees a row without its blob.
    for name, (blob_id, _) in _row_blobs(h).items():
        assert blob_id == legacy_ids[name] or aead.is_sealed(backend.raw_get(KIND_OF[name], blob_id))

    done = h.db_call(reseal.reseal_legacy_blobs, h.db, h.settings)
    assert sum(done.values()) == 3  # the photo, and the adapter (but for its old blob), were done before
    now = _row_blobs(h)
    for name, (blob_id, key_id) in now.items():
        assert backend.store(Role.MIGRATION).read(KIND_OF[name], blob_id, key_id=key_id) == plain[name]
    assert h.db_call(reseal.reseal_legacy_blobs, h.db, h.settings) == {"photos": 0, "models": 0, "generated": 0}

    # What the kills left (a copy no row names, an old plaintext blob no row names) is the orphan sweep's.
    referenced = {blob_id for blob_id, _ in now.values()}
    left = {obj for obj in backend.everything() if obj.split("/")[-1] not in referenced}
    assert len(left) == 2
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=h.settings.orphan_margin_hours, minutes=1)
    swept = h.db_call(sweep_orphan_blobs, h.db, backend.store(Role.RETENTION), later)
    assert sum(swept.values()) == 2
    stored = backend.everything()
    assert len(stored) == 5 and all(aead.is_sealed(c) for c in stored.values())
    assert not any(piece in c for c in stored.values() for d in plain.values() for piece in distinctive(d))


def test_a_fresh_install_never_stores_plaintext_through_the_api(legacy_harness):
    """An upload through the running server: the stored photo is sealed with a key of its own (not the account's),
    which the key store holds."""
    from faceharmony.core.db import models as m
    from tests.test_photos import upload

    h, backend = legacy_harness
    user = h.sign_up("fresh@example.com")
    photo = images.one_face()
    row_id = upload(h, user, photo).photo.id
    blob_id, key_id = h.db_call(lambda: (lambda p: (p.blob_id, p.key_id))(m.Photo.get_by_id(row_id)))
    assert key_id != h.db_call(lambda: m.Account.get_by_id(user.account_id).key_id)
    from faceharmony.core.keys.keyring import keyring

    assert keyring.exists(key_id)
    stored = backend.everything()
    assert list(stored) and all(aead.is_sealed(c) for c in stored.values())
    from PIL import Image

    opened = backend.store(Role.TRAINER).read("photos", blob_id, key_id=key_id)
    assert Image.open(io.BytesIO(opened)).size == (512, 512)
    for content in stored.values():
        assert not any(piece in content for piece in distinctive(opened))


def test_admin_migrate_reseals_what_an_older_version_left_plain(legacy_harness, monkeypatch, capsys):
    """`faceharmony-admin migrate` runs the reseal step after the schema migrations (the production upgrade)."""
    from faceharmony.server import admin_cli

    h, backend = legacy_harness
    if backend.name != "local":
        pytest.skip("the step itself runs on both backends above; this checks the command's wiring")
    _legacy_install(h, backend)
    for name, value in {
        "FACEHARMONY_DATA_DIR": str(h.settings.data_dir),
        "FACEHARMONY_DATABASE_URL": h.settings.database_url,
        "FACEHARMONY_SECRET_KEY": h.settings.secret_key,
    }.items():
        monkeypatch.setenv(name, value)
    assert admin_cli.main(["migrate"]) == 0
    assert "sealed 5 blobs" in capsys.readouterr().out
    stored = backend.everything()
    assert len(stored) == 5 and all(aead.is_sealed(c) for c in stored.values())
    assert admin_cli.main(["migrate"]) == 0
    assert "sealed" not in capsys.readouterr().out  # nothing left to seal
