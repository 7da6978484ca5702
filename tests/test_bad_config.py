"""Bad configuration at start: every entry point, as a real process against the real parts, says what is wrong in
one line (`prog: REASON: message`, no password), exits 2 and leaves nothing behind in its data folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes

BIN = Path(sys.executable).parent
PASSWORD = "s3cret-Pw-do-not-print"
ENTRIES = [
    ["faceharmony-server"],
    ["faceharmony-trainer", "--once"],
    ["faceharmony-order-worker", "--once"],
    ["faceharmony-retention", "--once"],
    ["faceharmony-admin", "migrate"],
]
IDS = [argv[0].removeprefix("faceharmony-") for argv in ENTRIES]


def start(argv, tmp_path, **settings) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env.update(
        FACEHARMONY_DATA_DIR=str(tmp_path / "data"),
        FACEHARMONY_LISTEN="127.0.0.1:0",
        FACEHARMONY_TRITON_URL="127.0.0.1:1",
        FACEHARMONY_TRITON_WAIT_SECONDS="0",
        **settings,
    )
    run = subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env, capture_output=True, text=True, timeout=180)
    return run.returncode, run.stderr


def left(tmp_path) -> list[str]:
    return (
        sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "data").rglob("*"))
        if (tmp_path / "data").exists()
        else []
    )


def migrated_if_needed(argv, tmp_path) -> list[str]:
    """The trainer and the order worker refuse an unmigrated database before they look at the bucket: their data
    folder is migrated first (embedded SQLite). Returns what is in it, which a refused start must leave as is."""
    if argv[0] in ("faceharmony-trainer", "faceharmony-order-worker"):
        rc, err = start(["faceharmony-admin", "migrate"], tmp_path)
        assert rc == 0, err
    return left(tmp_path)


def assert_refused(rc: int, stderr: str, prog: str, reason: str) -> str:
    lines = stderr.strip().splitlines()
    assert rc == 2, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"{prog}: {reason}"), stderr
    assert PASSWORD not in stderr
    return lines[0]


@pytest.mark.parametrize("argv", ENTRIES, ids=IDS)
@pytest.mark.parametrize(
    "url, message",
    [
        (f"postgresql://fh:{PASSWORD}@127.0.0.1:notaport/fh", "FACEHARMONY_DATABASE_URL: the port is not a number"),
        (f"postgresql://fh:{PASSWORD}@/fh", "FACEHARMONY_DATABASE_URL: no host"),
        (f"postgresql://fh:{PASSWORD}@127.0.0.1:5432/", "FACEHARMONY_DATABASE_URL: no database name"),
        (f"mysql://fh:{PASSWORD}@127.0.0.1/fh", "FACEHARMONY_DATABASE_URL must be sqlite:///PATH or postgresql://"),
    ],
    ids=["port", "host", "dbname", "scheme"],
)
def test_a_malformed_database_url(argv, url, message, tmp_path):
    rc, err = start(argv, tmp_path, FACEHARMONY_DATABASE_URL=url)
    assert_refused(rc, err, argv[0], message)
    assert left(tmp_path) == []


@pytest.mark.parametrize("argv", ENTRIES, ids=IDS)
def test_postgresql_on_a_closed_port(argv, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, err = start(argv, tmp_path, FACEHARMONY_DATABASE_URL=f"postgresql://fh:{PASSWORD}@127.0.0.1:{port}/fh")
    line = assert_refused(rc, err, argv[0], "DATABASE_UNREACHABLE")
    assert f"127.0.0.1:{port}" in line
    assert left(tmp_path) == []


@pytest.fixture(scope="module")
def password_role(pg_cluster):
    """A role that must give its password (scram) on the throwaway cluster, and a database it owns."""
    hba = pg_cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("host all fh_password_role 127.0.0.1/32 scram-sha-256\n" + original)
    name = pg_cluster.create_database()
    conn = pg_cluster.admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute(f"CREATE ROLE fh_password_role LOGIN PASSWORD '{PASSWORD}'")
            cur.execute(f'ALTER DATABASE "{name}" OWNER TO fh_password_role')
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()
    yield pg_cluster, name
    hba.write_text(original)
    pg_cluster.drop_database(name)
    conn = pg_cluster.admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
            cur.execute("DROP ROLE IF EXISTS fh_password_role")
    finally:
        conn.close()


@pytest.mark.parametrize("argv", ENTRIES, ids=IDS)
def test_postgresql_with_a_wrong_password(argv, password_role, tmp_path):
    cluster, name = password_role
    url = f"postgresql://fh_password_role:wrong-{PASSWORD}@127.0.0.1:{cluster.port}/{name}"
    rc, err = start(argv, tmp_path, FACEHARMONY_DATABASE_URL=url)
    line = assert_refused(rc, err, argv[0], "DATABASE_AUTH_FAILED")
    assert "fh_password_role" in line and "wrong-" not in line
    assert left(tmp_path) == []


@pytest.mark.parametrize("argv", ENTRIES, ids=IDS)
def test_postgresql_without_the_database(argv, password_role, tmp_path):
    cluster, _ = password_role
    url = f"postgresql://fh_password_role:{PASSWORD}@127.0.0.1:{cluster.port}/no_such_database"
    rc, err = start(argv, tmp_path, FACEHARMONY_DATABASE_URL=url)
    assert_refused(rc, err, argv[0], "DATABASE_MISSING")
    assert left(tmp_path) == []


def test_the_right_password_passes_the_probe(password_role, tmp_path):
    cluster, name = password_role
    url = f"postgresql://fh_password_role:{PASSWORD}@127.0.0.1:{cluster.port}/{name}"
    rc, err = start(["faceharmony-admin", "migrate"], tmp_path, FACEHARMONY_DATABASE_URL=url)
    assert rc == 0, err


@pytest.mark.parametrize("argv", ENTRIES, ids=IDS)
def test_the_gcs_emulator_stopped(argv, tmp_path):
    from tests.support.gcs import GcsEmulator

    emulator = GcsEmulator().start()
    bucket = emulator.new_bucket()
    emulator.stop()
    before = migrated_if_needed(argv, tmp_path)
    rc, err = start(
        argv,
        tmp_path,
        FACEHARMONY_BLOB_BACKEND="gcs",
        FACEHARMONY_GCS_BUCKET=bucket,
        FACEHARMONY_GCS_ENDPOINT=emulator.endpoint,
    )
    line = assert_refused(rc, err, argv[0], "STORAGE_UNREACHABLE")
    assert bucket in line
    assert left(tmp_path) == before


@pytest.mark.parametrize("argv", [["faceharmony-retention", "--once"]], ids=["retention"])
def test_a_bucket_that_does_not_exist(argv, gcs_emulator, tmp_path):
    """The retention role holds storage.buckets.get and reads the bucket itself; the other roles read an object
    (GCS's NotFound names a missing bucket; the emulator's does not, so only this role is tested here)."""
    rc, err = start(
        argv,
        tmp_path,
        FACEHARMONY_BLOB_BACKEND="gcs",
        FACEHARMONY_GCS_BUCKET="fh-no-such-bucket",
        FACEHARMONY_GCS_ENDPOINT=gcs_emulator.endpoint,
    )
    assert_refused(rc, err, argv[0], "STORAGE_BUCKET_MISSING: the bucket fh-no-such-bucket does not exist")
    assert left(tmp_path) == []


@pytest.mark.parametrize("argv", ENTRIES, ids=IDS)
def test_a_reachable_bucket_passes_the_probe_of_every_role(argv, gcs_emulator, tmp_path):
    """With the bucket there, the probe passes and the start goes on to its next refusal (no Triton for the
    order worker) or runs."""
    migrated_if_needed(argv, tmp_path)
    rc, err = start(
        argv,
        tmp_path,
        FACEHARMONY_BLOB_BACKEND="gcs",
        FACEHARMONY_GCS_BUCKET=gcs_emulator.new_bucket(),
        FACEHARMONY_GCS_ENDPOINT=gcs_emulator.endpoint,
        FACEHARMONY_AUTO_MIGRATE="false" if argv[0] == "faceharmony-server" else "true",
    )
    assert "STORAGE_" not in err and "Traceback" not in err, err


def test_the_order_worker_refuses_when_triton_is_down(tmp_path):
    rc, err = start(["faceharmony-admin", "migrate"], tmp_path)
    assert rc == 0, err
    before = left(tmp_path)
    rc, err = start(["faceharmony-order-worker"], tmp_path)
    line = assert_refused(rc, err, "faceharmony-order-worker", "TRITON_UNAVAILABLE: Triton at 127.0.0.1:1")
    assert "not reachable" in line
    assert left(tmp_path) == before


def test_an_order_worker_waiting_for_triton_stops_at_once_on_sigterm(tmp_path):
    """The launcher stops everything while a restarted worker still waits for Triton: the wait ends, status 0
    (not a TRITON_UNAVAILABLE refusal minutes later, which held the launcher's stop up)."""
    rc, err = start(["faceharmony-admin", "migrate"], tmp_path)
    assert rc == 0, err
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env.update(
        FACEHARMONY_DATA_DIR=str(tmp_path / "data"),
        FACEHARMONY_TRITON_URL="127.0.0.1:1",
        FACEHARMONY_TRITON_WAIT_SECONDS="600",
    )
    worker = subprocess.Popen(
        [str(BIN / "faceharmony-order-worker")], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert worker.stderr is not None
        for line in worker.stderr:  # the wait has begun once it says so
            if "waiting for Triton" in line:
                break
        else:
            pytest.fail(f"the worker exited with {worker.wait()} before waiting for Triton")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert "TRITON_UNAVAILABLE" not in worker.stderr.read()
    finally:
        if worker.poll() is None:
            worker.kill()


@pytest.mark.parametrize("argv", ENTRIES, ids=IDS)
@pytest.mark.parametrize("port", ["99999", "0"])
def test_smtp_with_a_bad_port(argv, port, tmp_path):
    rc, err = start(argv, tmp_path, FACEHARMONY_EMAIL_TRANSPORT="smtp", FACEHARMONY_SMTP_PORT=port)
    assert_refused(rc, err, argv[0], "FACEHARMONY_SMTP_PORT must be a port number (1-65535)")
    assert left(tmp_path) == []


@pytest.mark.parametrize("argv", ENTRIES, ids=IDS)
def test_gcs_without_a_bucket(argv, tmp_path):
    rc, err = start(argv, tmp_path, FACEHARMONY_BLOB_BACKEND="gcs")
    assert_refused(rc, err, argv[0], "FACEHARMONY_GCS_BUCKET is required with the gcs blob backend")
    assert left(tmp_path) == []


@pytest.mark.parametrize("argv", ENTRIES[:4], ids=IDS[:4])
def test_an_unmigrated_database_refused_before_anything_is_written(argv, tmp_path):
    rc, err = start(argv, tmp_path, FACEHARMONY_AUTO_MIGRATE="false")
    assert_refused(rc, err, argv[0], "the database needs migrations")
    assert left(tmp_path) == []
