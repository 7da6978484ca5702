"""The data folder is its owner's alone: folders 0700 and files 0600 whatever the umask (the SQLite file and
its -wal/-shm, the secret key, blobs, outbox emails, the base pipeline, Triton's backend folder and
repository view, the scratch folder), and a loose folder from an older version is tightened at start.

Each component writes exactly as its process does, under a permissive umask; the test then walks the
folder. tests/test_launcher.py walks the folder of the whole system started by `faceharmony-up` under
umask 0."""

from __future__ import annotations

import os
import stat

import pytest

from faceharmony.core import tempfiles
from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.datadir import prepare_data_dir
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import close_database, open_database
from faceharmony.core.db.migrate import migrate
from faceharmony.core.diffusion.pipeline import build_tiny_pipeline
from faceharmony.core.email.transports import OutboxTransport, build_message
from faceharmony.core.keys.factory import install_keyring
from faceharmony.core.settings import Settings
from tests.support.modes import loose, modes


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.torch  # builds the tiny base pipeline
@pytest.mark.parametrize("umask", [0o022, 0o000], indirect=True, ids=["umask-022", "umask-000"])
def test_everything_written_in_the_data_folder_is_private(tmp_path, umask):
    data = tmp_path / "missing-parent" / "data"
    settings = Settings.from_env({"FACEHARMONY_DATA_DIR": str(data)})
    prepare_data_dir(settings.data_dir)  # what the launcher and the server do first
    settings.secret()
    db = open_database(settings.resolved_database_url)
    try:
        migrate(db)
        m.WaitlistEntry.select().count()  # the database in use: -wal and -shm exist while it is open
        keyring = install_keyring(settings)  # the KEK and the key store, in the data folder
        key_id = keyring.new_key()
        LocalBlobStore(settings.blob_dir, Role.API, keyring).create(
            "photos", b"\xff\xd8 not really a photo", key_id=key_id
        )
        LocalBlobStore(settings.blob_dir, Role.TRAINER, keyring).create("models", b"adapter bytes", key_id=key_id)
        OutboxTransport(settings.outbox_dir).send(
            build_message(
                sender="a@faceharmony.invalid", to="ada@example.com", subject="code", body="123456", message_id="m1"
            )
        )
        build_tiny_pipeline(settings.base_model_dir)
        tempfiles.scratch_dir(settings.data_dir)
        try:
            from faceharmony.triton_launcher.server import (
                DEFAULT_MODELS,
                DEFAULT_REPOSITORY,
                TritonUnavailable,
                prepare_backend_dir,
                prepare_repository_view,
            )

            prepare_backend_dir(settings.data_dir / "triton" / "backends")
            prepare_repository_view(DEFAULT_REPOSITORY, DEFAULT_MODELS, settings.data_dir / "triton" / "repositories")
        except (ImportError, TritonUnavailable):  # no nvidia-pytriton on this machine
            pass

        written = modes(data)
        for name in (
            "faceharmony.sqlite3",
            "faceharmony.sqlite3-wal",
            "faceharmony.sqlite3-shm",
            "secret.key",
            "blobs",
            "blobs/photos",
            "outbox",
            "tmp",
            "base-model/model_index.json",
            "base-model/unet",
        ):
            assert name in written, sorted(written)
        assert any(p.startswith("outbox/") and p.endswith(".eml") for p in written)
        assert len([p for p in written if p.startswith("blobs/photos/")]) == 1
        assert loose(data) == {}
        assert loose(tmp_path / "missing-parent") == {}  # the data folder's missing parent too
    finally:
        close_database(db)


def test_a_loose_data_folder_is_tightened_at_start_and_links_are_left_alone(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "site-packages-file"
    outside.write_text("not ours")
    os.chmod(outside, 0o644)
    (data / "blobs" / "photos").mkdir(parents=True)
    (data / "blobs" / "photos" / "0123").write_bytes(b"photo")
    (data / "faceharmony.sqlite3").write_bytes(b"")
    (data / "link").symlink_to(outside)
    for path, mode in (
        (data, 0o755),
        (data / "blobs", 0o775),
        (data / "blobs" / "photos", 0o777),
        (data / "blobs" / "photos" / "0123", 0o644),
        (data / "faceharmony.sqlite3", 0o666),
    ):
        os.chmod(path, mode)

    prepare_data_dir(data)

    assert loose(data) == {}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


def test_a_loose_sqlite_file_outside_the_data_folder_is_tightened_when_opened(tmp_path):
    path = tmp_path / "elsewhere.sqlite3"
    for p in (path, path.with_name(path.name + "-wal")):
        p.write_bytes(b"")
        os.chmod(p, 0o644)
    db = open_database(f"sqlite:///{path}")
    close_database(db)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name(path.name + "-wal").stat().st_mode) == 0o600
