"""The retention daemon as an operator runs it: a subprocess with --dry-run (touches nothing, prints counts), --now and
--once (exit 0), a metrics file, and the loop serving Prometheus metrics until SIGTERM. Also the metrics format."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from faceharmony.core.db import models as m
from faceharmony.retention.metrics import Metrics
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import photo_pb2 as p
from tests.support.harness import START
from tests.support.listeners import listening
from tests.test_retention import blobs, upload

pytestmark = pytest.mark.processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def daemon_env(h) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env.update(
        FACEHARMONY_DATA_DIR=str(h.settings.data_dir),
        FACEHARMONY_DATABASE_URL=h.settings.database_url,
        FACEHARMONY_SECRET_KEY=h.settings.secret_key,
        FACEHARMONY_LOG_FORMAT="text",
    )
    return env


def cli(h, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "faceharmony.retention", *args],
        env=daemon_env(h),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_dry_run_now_and_once_from_the_command_line(harness, tmp_path):
    h = harness
    user = h.sign_up("cli@example.com")
    unattached, deleted = upload(h, user, 2)
    h.photos.DeletePhoto(p.DeletePhotoRequest(id=deleted), metadata=user.md)
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    before = blobs(h)
    after_grace = START + dt.timedelta(days=31)

    dry = cli(h, "--dry-run", "--now", iso(after_grace))
    assert dry.returncode == 0, dry.stderr
    lines = dict(line.split() for line in dry.stdout.splitlines() if line.startswith("  ") and len(line.split()) == 2)
    assert lines["accounts"] == "1" and lines["photos"] == "2"  # one deleted, one unattached and expired
    assert lines["orphan_data_keys"] == "0"  # every key of the run is named by a row (and inside the margin)
    assert "nothing was changed" in dry.stdout and "cli@example.com" not in dry.stdout + dry.stderr
    assert blobs(h) == before and h.db_call(m.Account.get_by_id, user.account_id).state == "deactivated"

    early = cli(h, "--once", "--now", iso(START + dt.timedelta(days=29)))
    assert early.returncode == 0, early.stderr
    assert h.db_call(m.Account.get_by_id, user.account_id).state == "deactivated"
    assert blobs(h) == set()  # the deleted photo and the expired unattached one went; the account stays
    assert h.db_call(m.Photo.select().count) == 0
    assert "photos=2" in early.stdout and "accounts=" not in early.stdout and unattached != deleted

    metrics = tmp_path / "retention.prom"
    done = cli(h, "--once", "--now", iso(after_grace), "--metrics-file", str(metrics))
    assert done.returncode == 0, done.stderr
    assert "accounts=1" in done.stdout
    assert blobs(h) == set() and h.db_call(m.Account.get_or_none, m.Account.id == user.account_id) is None
    text = metrics.read_text()
    assert 'faceharmony_retention_purged_total{kind="accounts"} 1' in text
    assert 'faceharmony_retention_overdue_items{kind="accounts"} 0' in text
    assert "faceharmony_retention_run_duration_seconds " in text

    bad = cli(h, "--once", "--now", "last tuesday")
    assert bad.returncode == 2 and "ISO-8601" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("host", [None, "127.0.0.2"], ids=["default-loopback", "metrics-host"])
def test_the_loop_serves_metrics_and_stops_on_sigterm(sqlite_harness, host):
    """The metrics port listens on 127.0.0.1 unless --metrics-host names another address (and nothing else listens)."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "faceharmony.retention",
            "--interval",
            "0.2",
            "--metrics-port",
            str(port),
            *(["--metrics-host", host] if host else []),
        ],
        env=daemon_env(sqlite_harness),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = urllib.request.urlopen(f"http://{host or '127.0.0.1'}:{port}/metrics", timeout=2).read().decode()
                if "faceharmony_retention_last_run_timestamp_seconds " in text:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no metrics"
            time.sleep(0.1)
        assert "# TYPE faceharmony_retention_purged_total counter" in text
        assert listening(proc.pid) == {(host or "127.0.0.1", port)}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_metrics_are_prometheus_text():
    metrics = Metrics()
    metrics.inc("purged_total", "accounts", 2)
    metrics.inc("purged_total", "accounts")
    metrics.set("overdue_items", 5, "photos")
    metrics.set("run_duration_seconds", 0.25)
    text = metrics.render()
    assert 'faceharmony_retention_purged_total{kind="accounts"} 3' in text
    assert 'faceharmony_retention_overdue_items{kind="photos"} 5' in text
    assert "faceharmony_retention_run_duration_seconds 0.25" in text
    assert metrics.total("purged_total") == 3


def test_with_bucket_soft_delete_the_daemon_reports_when_purged_blobs_are_really_gone(sqlite_harness):
    from tests.test_retention import retention

    h = sqlite_harness
    user = h.sign_up("soft@example.com")
    (photo,) = upload(h, user, 1)
    h.photos.DeletePhoto(p.DeletePhotoRequest(id=photo), metadata=user.md)
    daemon = retention(h)
    daemon.soft_delete_seconds = 7 * 24 * 3600
    assert h.db_call(daemon.run_once, h.clock.now() + dt.timedelta(days=90))["photos"] == 1  # as with --now
    until = daemon.metrics.get("blobs_recoverable_until_timestamp_seconds")
    assert until == (h.clock.now() + dt.timedelta(days=7)).timestamp()  # from the real clock, not the --now moment


def test_on_a_versioned_bucket_the_daemon_refuses_to_call_a_purge_final(harness, gcs_emulator, tmp_path):
    """The daemon as deployed on GCS: it reads the bucket's versioning at start-up; with it on, each purge is
    counted as not final, logged as an error, and `--once` exits 1. Without it the same run exits 0."""
    h = harness
    user = h.sign_up("versioned@example.com")
    photos = upload(h, user, 2)  # the daemon runs on the real clock, long past the harness's: mark each one's turn
    h.db_call(lambda: m.Photo.update(expires_at=None).where(m.Photo.id.in_(photos)).execute())
    client = gcs_emulator.client()
    plain, versioned = gcs_emulator.new_bucket(), gcs_emulator.new_bucket()
    bucket = client.get_bucket(versioned)
    bucket.versioning_enabled = True
    bucket.patch()

    def once(bucket_name: str) -> tuple[subprocess.CompletedProcess, str]:
        photo = photos.pop()
        h.db_call(lambda: m.Photo.update(deleted_at=h.clock.now()).where(m.Photo.id == photo).execute())
        env = daemon_env(h)
        env.update(
            FACEHARMONY_BLOB_BACKEND="gcs",
            FACEHARMONY_GCS_BUCKET=bucket_name,
            FACEHARMONY_GCS_ENDPOINT=gcs_emulator.endpoint,
        )
        metrics_file = tmp_path / f"{bucket_name}.prom"
        done = subprocess.run(
            [sys.executable, "-m", "faceharmony.retention", "--once", "--metrics-file", str(metrics_file)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done, metrics_file.read_text()

    done, text = once(plain)
    assert done.returncode == 0, done.stderr
    assert "photos=1" in done.stdout and "faceharmony_retention_bucket_versioning_enabled 0" in text
    assert "purges_not_final_total{" not in text

    done, text = once(versioned)
    assert done.returncode == 1 and "photos=1" in done.stdout and "not final" in done.stdout
    assert "faceharmony_retention_bucket_versioning_enabled 1" in text
    assert 'faceharmony_retention_purges_not_final_total{kind="photos"} 1' in text
    assert "object versioning is on" in done.stderr and "purges not final" in done.stderr
    assert "versioned@example.com" not in done.stdout + done.stderr


def test_now_in_the_future_moves_only_deadlines_never_the_orphan_sweep_or_audit_times(harness):
    """`--once --now <far future>` must not sweep the blob of an upload whose row is not committed yet."""
    from faceharmony.core.blobstore.base import Role
    from faceharmony.core.blobstore.local import LocalBlobStore

    h = harness
    user = h.sign_up("future@example.com")
    h.accounts.DeleteAccount(a.DeleteAccountRequest(confirm_email=user.email), metadata=user.md)
    from faceharmony.core.keys.keyring import keyring

    api, key = LocalBlobStore(h.settings.blob_dir, Role.API), keyring.new_key()
    in_flight = api.create("photos", b"uploading", key_id=key)
    abandoned = api.create("photos", b"left by a crash", key_id=key)
    old = time.time() - (h.settings.orphan_margin_hours + 1) * 3600
    os.utime(h.settings.blob_dir / "photos" / abandoned, (old, old))
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)

    dry = cli(h, "--dry-run", "--now", iso(far))
    assert dry.returncode == 0, dry.stderr
    lines = dict(line.split() for line in dry.stdout.splitlines() if line.startswith("  ") and len(line.split()) == 2)
    assert lines["orphan_photos_blobs"] == "1"  # the abandoned one only
    done = cli(h, "--once", "--now", iso(far))
    assert done.returncode == 0, done.stderr
    assert "accounts=1" in done.stdout and "orphan_photos_blobs=1" in done.stdout
    assert blobs(h) == {in_flight}  # the upload in flight stays; the real orphan went
    events = h.db_call(
        lambda: list(m.AuditEvent.select().where(m.AuditEvent.kind.in_(["ACCOUNT_PURGED", "RETENTION_RUN"])))
    )
    assert len(events) == 2
    for event in events:  # stamped with the real time, not the --now moment
        assert abs(event.at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=10)
