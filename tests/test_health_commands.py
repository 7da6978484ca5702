"""The health commands images, compose and Kubernetes run (`--healthcheck`): real processes, one line, exit 0 or 1.

faceharmony-server --healthcheck        gRPC health (grpc.health.v1) of FACEHARMONY_LISTEN
faceharmony-trainer / -retention / -order-worker --healthcheck   the heartbeat file is fresh
faceharmony-order-worker --ready        also: Triton answered the worker's last check
faceharmony-triton --healthcheck        the server live and ready and its models ready
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faceharmony.server.main import loopback_target

pytestmark = pytest.mark.processes

BIN = Path(sys.executable).parent
# Small, so that a killed process's heartbeat goes stale within seconds (never a sleep of minutes).
FAST = {"FACEHARMONY_HEARTBEAT_INTERVAL_SECONDS": "0.2", "FACEHARMONY_HEARTBEAT_MAX_AGE_SECONDS": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env.update(FACEHARMONY_DATA_DIR=str(data_dir), **FAST, **settings)
    return env


def health(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    run = subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env, capture_output=True, text=True, timeout=60)
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and not run.stderr.strip(), (run.stdout, run.stderr)
    return run.returncode, lines[0]


def until(argv, env, code: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        rc, line = health(argv, env)
        if rc == code:
            return line
        assert time.monotonic() < deadline, line
        time.sleep(0.2)


def migrated(data_dir: Path) -> None:
    run = subprocess.run(
        [str(BIN / "faceharmony-admin"), "migrate"], env=environment(data_dir), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_loopback_target_maps_wildcards():
    assert loopback_target("0.0.0.0:50051") == "127.0.0.1:50051"
    assert loopback_target("[::]:50051") == "[::1]:50051"
    assert loopback_target(":50051") == "127.0.0.1:50051"
    assert loopback_target("10.1.2.3:50051") == "10.1.2.3:50051"


def test_server_healthcheck_follows_the_server(tmp_path):
    port = free_port()
    env = environment(tmp_path / "data", FACEHARMONY_LISTEN=f"127.0.0.1:{port}")
    rc, line = health(["faceharmony-server", "--healthcheck"], env)
    assert rc == 1 and line == f"faceharmony-server: unhealthy: 127.0.0.1:{port}: UNAVAILABLE"
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen([str(BIN / "faceharmony-server")], env=env, stdout=log, stderr=log)
        try:
            line = until(["faceharmony-server", "--healthcheck"], env, 0)
            assert line == f"faceharmony-server: healthy: 127.0.0.1:{port}: SERVING"
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(60) == 0
    until(["faceharmony-server", "--healthcheck"], env, 1)


@pytest.mark.parametrize(
    "prog, argv",
    [("faceharmony-trainer", ["faceharmony-trainer"]), ("faceharmony-retention", ["faceharmony-retention"])],
    ids=["trainer", "retention"],
)
def test_a_heartbeat_is_fresh_while_running_and_stale_once_killed(prog, argv, tmp_path):
    data = tmp_path / "data"
    migrated(data)
    # A retention cycle every hour: the heartbeat must stay fresh through the long sleep.
    env = environment(data, FACEHARMONY_RETENTION_INTERVAL_SECONDS="3600")
    check = [prog, "--healthcheck"]
    rc, line = health(check, env)
    assert rc == 1 and line.startswith(f"{prog}: unhealthy: no heartbeat file")
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=env, stdout=log, stderr=log)
        try:
            assert until(check, env, 0).startswith(f"{prog}: healthy: heartbeat ")
            beat = data / "run" / f"{prog}.heartbeat"
            assert stat.S_IMODE(beat.stat().st_mode) == 0o600
            assert stat.S_IMODE(beat.parent.stat().st_mode) == 0o700
            assert set(json.loads(beat.read_text())) == {"time", "pid", "ready", "detail"}
            time.sleep(3)  # longer than the max age: still fresh, the beats go on during the sleep
            assert health(check, env)[0] == 0
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            line = until(check, env, 1)
            assert line.startswith(f"{prog}: unhealthy: heartbeat ") and "(max 2 s)" in line
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_stopped_trainer_removes_its_heartbeat(tmp_path):
    data = tmp_path / "data"
    migrated(data)
    env = environment(data)
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen([str(BIN / "faceharmony-trainer")], env=env, stdout=log, stderr=log)
        until(["faceharmony-trainer", "--healthcheck"], env, 0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not (data / "run" / "faceharmony-trainer.heartbeat").exists()
    assert health(["faceharmony-trainer", "--healthcheck"], env)[0] == 1


# --- Triton and the order worker (the real server from the wheel) ---------------------------------------------
@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    from tests.support.triton import require_triton, triton_env

    require_triton()
    from faceharmony.core.diffusion.pipeline import build_tiny_pipeline
    from faceharmony.triton_launcher.server import start_triton

    data = tmp_path_factory.mktemp("triton-data")
    build_tiny_pipeline(data / "base-model", seed=0)
    with start_triton(tmp_path_factory.mktemp("triton"), env=triton_env(data), ready_timeout=180) as srv:
        yield srv


@pytest.mark.triton
def test_triton_healthcheck(triton, tmp_path):
    env = environment(tmp_path / "data")
    port = triton.grpc_url.rsplit(":", 1)[1]
    rc, line = health(["faceharmony-triton", "--healthcheck", "--grpc-port", port], env)
    assert rc == 0 and line == f"faceharmony-triton: healthy: 127.0.0.1:{port}: faceharmony_diffusion ready"
    rc, line = health(["faceharmony-triton", "--healthcheck", "--grpc-port", port, "--model", "nope"], env)
    assert rc == 1 and line.endswith("models not ready: nope")
    closed = str(free_port())
    rc, line = health(["faceharmony-triton", "--healthcheck", "--grpc-port", closed], env)
    assert rc == 1 and line.startswith(f"faceharmony-triton: unhealthy: 127.0.0.1:{closed}: ")


@pytest.mark.triton
def test_order_worker_health_and_readiness_follow_triton(triton, tmp_path):
    """Last in the module: it stops Triton. Live and ready with Triton up; Triton gone: still live (no restart
    would help), not ready, and one log line says so, however many beats pass."""
    data = tmp_path / "data"
    migrated(data)
    env = environment(data, FACEHARMONY_TRITON_URL=triton.grpc_url)
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([str(BIN / "faceharmony-order-worker")], env=env, stdout=log, stderr=log)
        try:
            until(["faceharmony-order-worker", "--healthcheck"], env, 0)
            line = until(["faceharmony-order-worker", "--ready"], env, 0)
            assert line.startswith("faceharmony-order-worker: ready: ") and "triton ready" in line
            triton.process.send_signal(signal.SIGKILL)
            triton.process.wait(30)
            line = until(["faceharmony-order-worker", "--ready"], env, 1)
            assert line.startswith(f"faceharmony-order-worker: not ready: Triton at {triton.grpc_url}: ")
            time.sleep(2)  # many beats with Triton down
            assert health(["faceharmony-order-worker", "--healthcheck"], env)[0] == 0
            assert worker.poll() is None
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    text = log_path.read_text()
    assert text.count("Triton unavailable") == 1, text
    assert "Traceback" not in text
