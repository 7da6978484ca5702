"""README's start command: `faceharmony-up` starts the whole system on its embedded defaults (server, trainer,
Triton, order worker, retention daemon), listens on loopback only, keeps its data folder private under umask 0,
restarts a worker process that dies, and shuts everything down on SIGTERM. Runs the real processes in a temporary folder, on free ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceharmony.triton_launcher.server import free_port
from tests.support.listeners import listening
from tests.support.modes import loose, modes
from tests.support.triton import require_triton
from tests.support.wait import wait_for

pytestmark = [pytest.mark.processes, pytest.mark.triton]

require_triton()

BIN = Path(sys.executable).parent
NAMES = ("server", "trainer", "triton", "order-worker", "retention")


def triton_ports() -> int:
    """A gRPC port whose neighbours (HTTP, metrics) are free too."""
    import socket

    for _ in range(50):
        port = free_port()
        ok = True
        for p in (port - 1, port + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port triple")


def pids(log: str, verb: str = "started") -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(rf"faceharmony-up: {verb} ([a-z-]+) \(pid (\d+)\)", log)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of the (gone) launcher counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_make_up_starts_everything_on_loopback_restarts_a_dead_worker_and_stops_cleanly(tmp_path):
    import tritonclient.grpc as grpcclient

    api_port, triton_port = free_port(), triton_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env.update(
        FACEHARMONY_DATA_DIR=str(tmp_path / "data"),
        FACEHARMONY_LISTEN=f"127.0.0.1:{api_port}",
        FACEHARMONY_TRITON_URL=f"127.0.0.1:{triton_port}",
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        # The most permissive umask: every folder and file in the data folder must still be private.
        up = subprocess.Popen([str(BIN / "faceharmony-up")], env=env, cwd=tmp_path, stdout=log, stderr=log, umask=0o000)
    try:
        started = wait_for(
            lambda: (p := pids(log_path.read_text(errors="replace"))) and len(p) == len(NAMES) and p,
            180,
            "all processes",
        )
        with grpc.insecure_channel(f"127.0.0.1:{api_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=60, wait_for_ready=True).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton_port}")

        def triton_ready() -> bool:
            try:
                return client.is_model_ready("faceharmony_diffusion")
            except Exception:  # noqa: BLE001 - not listening yet
                return False

        wait_for(triton_ready, 180, "Triton's model")
        # Every listener of every process is on loopback: the API, Triton's gRPC and metrics (no HTTP).
        expected = {("127.0.0.1", api_port), ("127.0.0.1", triton_port), ("127.0.0.1", triton_port + 1)}
        assert listening(up.pid) == expected
        os.kill(started["order-worker"], signal.SIGKILL)
        restarted = wait_for(
            lambda: pids(log_path.read_text(errors="replace"), "restarted").get("order-worker"), 30, "the restart"
        )
        assert restarted != started["order-worker"] and alive(restarted)
        assert up.poll() is None and all(alive(pid) for name, pid in started.items() if name != "order-worker")
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        everyone = [pid for name, pid in started.items() if name != "order-worker"] + [restarted]
        wait_for(lambda: not any(alive(pid) for pid in everyone), 30, "every child to exit")
        written = modes(tmp_path / "data")
        assert {"faceharmony.sqlite3", "secret.key", "base-model/model_index.json", "triton/backends/python"} <= set(
            written
        )
        assert loose(tmp_path / "data") == {}
    finally:
        if up.poll() is None:
            up.kill()
        print(log_path.read_text(errors="replace")[-3000:])
