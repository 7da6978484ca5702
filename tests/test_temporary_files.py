"""Temporary files holding personal data (P9, P13, P17): made inside the data folder, 0600 in 0700 folders, and swept once older than the orphan margin, also after a SIGKILL mid-write.

Real processes (tests/support/killed_writer.py) write through the real blob
store, the email outbox and the real trainer, stop at a fixed point and are
killed with SIGKILL; a retention run within the margin leaves their temporary
files alone (a write may still be in flight), one with its clock past the
margin leaves nothing but what rows name.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from faceharmony.core import tempfiles
from faceharmony.core.blobstore.base import BlobPermissionError, Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.clock import ManualClock
from faceharmony.core.db import models as m
from faceharmony.core.diffusion.pipeline import build_tiny_pipeline
from faceharmony.core.keys import aead
from faceharmony.retention.daemon import Retention
from faceharmony.trainer.worker import Trainer
from faceharmony.v1 import model_pb2 as mp
from faceharmony.v1 import photo_pb2 as p
from tests.support import images
from tests.support.harness import start_harness, trainer_env
from tests.support.killed_writer import PERSONAL

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[1]
MARKER = b"ada.lovelace@example.com"


def real_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def killed_mid_write(stage: str, *args: str, env: dict[str, str] | None = None, tmpdir: Path) -> None:
    """Runs the writer until it pauses at `stage`, then SIGKILLs it. The system's temporary folder is `tmpdir`."""
    env = {**(env or {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}), "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.killed_writer", stage, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline()
        assert line == b"paused\n", proc.communicate(timeout=60)[1].decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def temporary_entries(*folders: Path) -> list[Path]:
    return [
        path
        for folder in folders
        if folder.exists()
        for path in folder.iterdir()
        if path.name.startswith(tempfiles.TEMP_PREFIX)
    ]


def retention_at(h, clock_time: dt.datetime) -> dict[str, int]:
    """One `--once` cycle: the policies' deadlines as of the harness's clock, the sweep's clock at `clock_time`."""
    daemon = Retention(
        h.settings, h.db, LocalBlobStore(h.settings.blob_dir, Role.RETENTION), clock=ManualClock(clock_time)
    )
    return h.db_call(daemon.run_once, h.clock.now(), True)


@pytest.fixture
def private_tmp(tmp_path):
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("stage", ["blob-before-link", "blob-after-link", "outbox-before-rename"])
def test_a_writer_killed_mid_write_leaves_nothing_after_a_sweep_past_the_margin(harness, private_tmp, stage):
    h = harness
    user = h.sign_up("tmpfiles@example.com")
    photo = h.photos.UploadPhoto(p.UploadPhotoRequest(content=images.one_face()), metadata=user.md).photo
    kept_blob = h.db_call(lambda: m.Photo.get_by_id(photo.id).blob_id)
    h.deliver_emails()
    emails_before = set(os.listdir(h.settings.outbox_dir))
    folder = h.settings.outbox_dir if stage.startswith("outbox") else h.settings.blob_dir
    killed_mid_write(stage, str(folder), tmpdir=private_tmp)

    photos_dir, outbox = h.settings.blob_dir / "photos", h.settings.outbox_dir
    left = temporary_entries(photos_dir, outbox)
    assert len(left) == 1
    if stage.startswith("blob"):  # a blob's temporary file holds what the blob will: sealed bytes only
        assert aead.is_sealed(left[0].read_bytes()) and MARKER not in left[0].read_bytes()
    else:
        assert MARKER in left[0].read_bytes()
    assert stat.S_IMODE(left[0].stat().st_mode) == 0o600 and stat.S_IMODE(left[0].parent.stat().st_mode) == 0o700
    if stage == "blob-after-link":
        assert left[0].stat().st_nlink == 2  # the blob's second name: deleting the blob alone would free nothing
    assert os.listdir(private_tmp) == []

    assert retention_at(h, real_now())["temporary_files"] == 0  # inside the margin: a write may be in flight
    assert temporary_entries(photos_dir, outbox) == left

    past = real_now() + dt.timedelta(hours=h.settings.orphan_margin_hours, minutes=1)
    swept = retention_at(h, past)
    assert swept["temporary_files"] == 1
    assert swept["orphan_photos_blobs"] == (1 if stage == "blob-after-link" else 0)
    assert sorted(os.listdir(photos_dir)) == [kept_blob]  # only what a row names
    assert set(os.listdir(outbox)) == emails_before
    assert not [name for name, data in files_under(h.settings.data_dir).items() if MARKER in data]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny"
    build_tiny_pipeline(folder)
    return folder


def test_the_trainer_serializes_in_memory_and_a_kill_mid_save_leaves_nothing(
    tmp_path, base_model, private_tmp, monkeypatch
):
    h = start_harness(
        tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite3'}", base_model=str(base_model), training_steps=2
    )
    try:
        user = h.sign_up("trainer-tmp@example.com")
        payload = images.one_face()
        ids = [h.photos.UploadPhoto(p.UploadPhotoRequest(content=payload), metadata=user.md).photo.id for _ in range(4)]
        model = h.models.CreateModel(mp.CreateModelRequest(display_name="Me", photo_ids=ids), metadata=user.md).model

        killed_mid_write("trainer-mid-save", env=trainer_env(h, TMPDIR=str(private_tmp)), tmpdir=private_tmp)
        scratch = h.settings.data_dir / tempfiles.SCRATCH_FOLDER
        # The adapter is serialized in memory (issue 12: never in a file in the clear): nothing was written.
        assert not scratch.exists() or temporary_entries(scratch) == []
        assert os.listdir(private_tmp) == []  # nothing in the system's temporary folder

        trainer = Trainer(h.settings, clock=h.clock, db=h.db)
        assert trainer.sweep_scratch() == 0  # a starting trainer leaves what is inside the margin
        assert retention_at(h, real_now())["temporary_files"] == 0
        models_dir = h.settings.blob_dir / "models"
        assert not models_dir.exists() or os.listdir(models_dir) == []  # killed before storing anything

        # The job is trained again to the end once the killed trainer's lease (real time) expired: nothing stays behind.
        monkeypatch.setattr("tempfile.tempdir", str(private_tmp))
        later = ManualClock(real_now() + dt.timedelta(seconds=h.settings.training_lease_seconds + 60))
        trainer = Trainer(h.settings, clock=later, db=h.db)
        assert h.db_call(trainer.run_once)
        assert h.db_call(lambda: m.UserModel.get_by_id(model.id).state) == "ready"
        assert (not scratch.exists() or list(scratch.iterdir()) == []) and os.listdir(private_tmp) == []
    finally:
        h.stop()


def test_a_starting_trainer_sweeps_its_stale_scratch(tmp_path):
    from faceharmony.core.settings import Settings

    settings = Settings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", secret_key="k" * 32
    )
    with tempfiles.scratch_folder(settings.data_dir, "lora") as kept:
        stale = tempfiles.scratch_folder(settings.data_dir, "lora")
        (Path(stale.name) / "adapter").write_bytes(PERSONAL)
        old = real_now().timestamp() - (settings.orphan_margin_hours * 3600 + 60)
        for path in (Path(stale.name) / "adapter", Path(stale.name)):
            os.utime(path, (old, old))
        trainer = Trainer(settings)
        assert trainer.sweep_scratch() == 1
        assert [x.name for x in temporary_entries(settings.data_dir / "tmp")] == [Path(kept).name]
        stale.cleanup()


def test_sweep_stale_removes_only_old_temporary_entries(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    old = real_now().timestamp() - 7200
    entries = {
        "old-file": tempfiles.temporary_path(folder, "a"),
        "new-file": tempfiles.temporary_path(folder, "b"),
        "old-folder": folder / ".tmp-lora-x",
        "old-folder-new-inside": folder / ".tmp-lora-y",
        "old-link": tempfiles.temporary_path(folder, "c"),
        "not-temporary": folder / "0123456789abcdef0123456789abcdef",
    }
    for name in ("old-file", "new-file", "not-temporary"):
        entries[name].write_bytes(PERSONAL)
    for name in ("old-folder", "old-folder-new-inside"):
        entries[name].mkdir()
        (entries[name] / "inside").write_bytes(PERSONAL)
    entries["old-link"].symlink_to(entries["not-temporary"])
    for name in ("old-file", "old-folder", "old-link", "not-temporary"):
        for path in ([entries[name] / "inside"] if name == "old-folder" else []) + [entries[name]]:
            os.utime(path, (old, old), follow_symlinks=False)
    os.utime(entries["old-folder-new-inside"], (old, old))
    cutoff = real_now() - dt.timedelta(hours=1)
    assert tempfiles.sweep_stale(folder, cutoff, dry_run=True) == 3 and all(
        p.exists() or p.is_symlink() for p in entries.values()
    )
    assert tempfiles.sweep_stale(folder, cutoff) == 3
    assert sorted(x.name for x in folder.iterdir()) == sorted(
        entries[n].name for n in ("new-file", "old-folder-new-inside", "not-temporary")
    )
    assert entries["not-temporary"].read_bytes() == PERSONAL  # a link is removed, never what it points to
    assert tempfiles.sweep_stale(tmp_path / "missing", cutoff) == 0


def test_only_the_retention_role_sweeps_the_store(tmp_path):
    for role in (Role.API, Role.TRAINER, Role.ORDER):
        with pytest.raises(BlobPermissionError):
            LocalBlobStore(tmp_path, role).sweep_temporary(real_now())
    assert LocalBlobStore(tmp_path, Role.RETENTION).sweep_temporary(real_now()) == 0
