"""`faceharmony-up`: starts the whole system on its embedded defaults and supervises it.

The system: the API server, a trainer, Triton (the wheel's server on
`triton_models/`, gRPC on the port of FACEHARMONY_TRITON_URL), an order worker
and the retention daemon. Every listener is on 127.0.0.1 unless a setting says
otherwise (FACEHARMONY_LISTEN, FACEHARMONY_TRITON_LISTEN_ADDRESS); with
FACEHARMONY_METRICS_PORT set, the server, trainer, order worker and retention
daemon serve /metrics on that port and the next three (METRICS_OFFSETS). The data folder is made private (0700,
files 0600) before anything starts. Each process runs as a child with the same
environment; SIGTERM/SIGINT are passed on, and a child gets SIGTERM from the
kernel if the supervisor itself dies (SIGKILL included: core/children.py). A worker process (trainer, Triton,
order worker, retention daemon) that dies is started again after a growing
pause: its work is not lost (the job queues hand a dead worker's job to the
next one). One that keeps dying (5 exits within 2 minutes), or the API server
exiting, stops the whole system, so a broken part is never hidden. The order
worker waits at start for Triton (FACEHARMONY_TRITON_WAIT_SECONDS), then
retries its image requests until Triton answers.

On the embedded defaults (FACEHARMONY_BASE_MODEL unset) the tiny random-weight
base pipeline is built into the data folder first if it is not there yet: no
weights can be downloaded, and production points FACEHARMONY_BASE_MODEL at a
folder of real diffusers weights instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from faceharmony.core import process
from faceharmony.core.children import die_with_parent
from faceharmony.core.datadir import prepare_data_dir
from faceharmony.core.settings import Settings


def processes(settings: Settings) -> list[tuple[str, list[str]]]:
    # Triton's gRPC port is FACEHARMONY_TRITON_URL's, metrics the next one (8001/8002); HTTP is off. Its listeners
    # bind to FACEHARMONY_TRITON_LISTEN_ADDRESS (127.0.0.1 by default), which faceharmony-triton reads itself.
    grpc_port = int(settings.triton_url.rsplit(":", 1)[-1])
    triton_ports = ["--grpc-port", str(grpc_port), "--metrics-port", str(grpc_port + 1)]
    return [
        ("server", [sys.executable, "-m", "faceharmony.server"]),
        ("trainer", [sys.executable, "-m", "faceharmony.trainer"]),
        ("triton", [sys.executable, "-m", "faceharmony.triton_launcher", *triton_ports]),
        ("order-worker", [sys.executable, "-m", "faceharmony.order_worker"]),
        ("retention", [sys.executable, "-m", "faceharmony.retention"]),
    ]


# With FACEHARMONY_METRICS_PORT=P each child serves /metrics on its own port: P + its offset here (Triton's
# metrics port is its gRPC port + 1, as above).
METRICS_OFFSETS = {"server": 0, "trainer": 1, "order-worker": 2, "retention": 3}


def child_env(settings: Settings, name: str) -> dict[str, str]:
    """The child's environment: the supervisor's, with its own metrics port when the metrics port is set."""
    env = os.environ.copy()
    if settings.metrics_port:
        env["FACEHARMONY_METRICS_PORT"] = str(
            settings.metrics_port + METRICS_OFFSETS[name] if name in METRICS_OFFSETS else 0
        )
    return env


def ensure_base_model(settings: Settings) -> None:
    if settings.base_model or (settings.base_model_dir / "model_index.json").exists():
        return
    print(f"faceharmony-up: building the tiny base pipeline in {settings.base_model_dir}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "faceharmony.server.admin_cli", "build-tiny-base"], check=True)


def wait_for_migrations(settings: Settings, timeout: float = 60) -> None:
    from faceharmony.core.blobstore.reseal import done as reseal_done
    from faceharmony.core.db.connection import close_database, open_database
    from faceharmony.core.db.migrate import pending

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db = open_database(settings.resolved_database_url)
        try:
            if not pending(db) and reseal_done(db):  # the server also reseals an older install's blobs
                return
        except Exception:  # noqa: BLE001 - the database may not exist yet
            pass
        finally:
            close_database(db)
        time.sleep(0.5)


RESTARTABLE = ("trainer", "triton", "order-worker", "retention")
CRASH_WINDOW_SECONDS = 120.0
MAX_CRASHES = 5


def _log(message: str) -> None:
    print(f"faceharmony-up: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="faceharmony-up", description=__doc__.split("\n\n")[0]).parse_args(argv)
    return process.run("faceharmony-up", _supervise)


def _supervise(entry: process.Entry) -> int:
    settings = entry.settings  # read once; the children read the same environment
    children: dict[str, subprocess.Popen] = {}
    commands = dict(processes(settings))
    crashes: dict[str, list[float]] = {}
    restart_at: dict[str, float] = {}

    def stop(_signum: int | None = None) -> None:
        entry.stopping.set()
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    entry.on_stop(stop)
    prepare_data_dir(settings.data_dir)  # 0700 before any child writes into it (core/datadir.py)
    # The keyring once, before the children: a fresh install gets its first KEK version here (not one per child
    # at once), and a missing KEK stops everything with one line (KeysUnavailable, core/process.py).
    from faceharmony.core.keys.factory import install_keyring

    install_keyring(settings)
    ensure_base_model(settings)
    # The server applies the migrations; the trainer waits for them by starting second.
    for name, argv in commands.items():
        if entry.stopping.is_set():
            break
        children[name] = subprocess.Popen(argv, env=child_env(settings, name), preexec_fn=die_with_parent())
        _log(f"started {name} (pid {children[name].pid})")
        if name == "server":
            wait_for_migrations(settings)
    exit_code = 0
    while children or (restart_at and not entry.stopping.is_set()):
        now = time.monotonic()
        for name, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[name]
            if entry.stopping.is_set():
                continue
            recent = [t for t in crashes.get(name, []) if now - t < CRASH_WINDOW_SECONDS] + [now]
            crashes[name] = recent
            if name in RESTARTABLE and len(recent) < MAX_CRASHES:
                delay = min(30.0, 2.0 ** (len(recent) - 1))
                _log(f"{name} exited with {code}; starting it again in {delay:.0f}s")
                restart_at[name] = now + delay
                continue
            _log(f"{name} exited with {code}; stopping the rest")
            exit_code = code or 1
            stop()
        for name, when in list(restart_at.items()):
            if entry.stopping.is_set():
                restart_at.clear()
            elif now >= when:
                del restart_at[name]
                children[name] = subprocess.Popen(
                    commands[name], env=child_env(settings, name), preexec_fn=die_with_parent()
                )
                _log(f"restarted {name} (pid {children[name].pid})")
        time.sleep(0.2)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
