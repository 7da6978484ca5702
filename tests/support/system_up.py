"""A real `faceharmony-up` for an end-to-end test: its own data folder and loopback ports, few training and
generation steps, stopped with SIGINT (then killed) at the end, its log printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class System:
    data_dir: Path
    api_url: str
    triton_url: str
    env: dict[str, str]  # the system's FACEHARMONY_* settings (and the rest of this environment)
    # With metrics=True: each process's /metrics address (server, trainer, order-worker, retention, triton).
    metrics: dict[str, str]


def free_port_block(n: int) -> int:
    """The first of n consecutive free loopback ports (faceharmony-up gives its children P, P+1, ...)."""
    import socket

    from faceharmony.triton_launcher.server import free_port

    for _ in range(50):
        base, ok = free_port(), True
        for port in range(base + 1, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no {n} consecutive free ports")


@contextmanager
def system_up(tmp_path: Path, *, ready_timeout: float = 120, metrics: bool = False) -> Iterator[System]:
    """`faceharmony-up` as `make up` runs it, serving on loopback once its API answers health; with metrics,
    every process serves /metrics (FACEHARMONY_METRICS_PORT)."""
    from faceharmony.clients.sdk import Client, FaceHarmonyError
    from faceharmony.launcher.main import METRICS_OFFSETS
    from faceharmony.triton_launcher.server import free_port
    from tests.support.wait import wait_for
    from tests.test_launcher import triton_ports

    api_port, triton_port = free_port(), triton_ports()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env.update(
        FACEHARMONY_DATA_DIR=str(data),
        FACEHARMONY_LISTEN=f"127.0.0.1:{api_port}",
        FACEHARMONY_TRITON_URL=f"127.0.0.1:{triton_port}",
        # The fewest steps that still train an adapter and run the denoising loop.
        FACEHARMONY_TRAINING_STEPS="2",
        FACEHARMONY_GENERATION_STEPS="2",
        FACEHARMONY_TRAINER_POLL_SECONDS="0.5",
        FACEHARMONY_ORDER_WORKER_POLL_SECONDS="0.5",
        FACEHARMONY_LOG_FORMAT="text",
    )
    addresses: dict[str, str] = {}
    if metrics:
        base = free_port_block(len(METRICS_OFFSETS))
        env["FACEHARMONY_METRICS_PORT"] = str(base)
        addresses = {name: f"127.0.0.1:{base + offset}" for name, offset in METRICS_OFFSETS.items()}
        addresses["triton"] = f"127.0.0.1:{triton_port + 1}"  # Triton's metrics: its gRPC port + 1
    log_path = tmp_path / "up.log"
    command = [os.path.join(os.path.dirname(sys.executable), "faceharmony-up")]
    with log_path.open("wb") as log:
        up = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        with Client(f"127.0.0.1:{api_port}", timeout=2) as probe:

            def serving() -> bool:
                try:
                    return probe.health() == "SERVING"
                except FaceHarmonyError:
                    return False

            wait_for(serving, ready_timeout, "the API server")
        yield System(data, f"127.0.0.1:{api_port}", f"127.0.0.1:{triton_port}", env, addresses)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
        print(log_path.read_text(errors="replace")[-3000:])
