"""`faceharmony-up`: starts the whole system on its embedded defaults and supervises it.

The system: the API server, a trainer, Triton (the wheel's server on
`triton_models/`, gRPC on the port of FACEHARMONY_TRITON_URL), an order worker
and the retention daemon. Each process runs as a child with the same
environment; SIGTERM/SIGINT are passed on, and when one child exits the others
are stopped, so a broken part is never hidden. The order worker does not wait
for Triton: it retries its image requests until Triton answers.

On the embedded defaults (FACEHARMONY_BASE_MODEL unset) the tiny random-weight
base pipeline is built into the data folder first if it is not there yet: no
weights can be downloaded, and production points FACEHARMONY_BASE_MODEL at a
folder of real diffusers weights instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time



def processes() -> list[tuple[str, list[str]]]:
    from faceharmony.core.settings import Settings

    settings = Settings.from_env()
    triton_port = settings.triton_url.rsplit(":", 1)[-1]
    return [
        ("server", [sys.executable, "-m", "faceharmony.server"]),
        ("trainer", [sys.executable, "-m", "faceharmony.trainer"]),
        ("triton", [sys.executable, "-m", "faceharmony.core.inference.triton_server", "--grpc-port", triton_port]),
        ("order-worker", [sys.executable, "-m", "faceharmony.core.order_worker"]),
        ("retention", [sys.executable, "-m", "faceharmony.core.retention"]),
    ]


def ensure_base_model() -> None:
    from faceharmony.core.settings import Settings

    settings = Settings.from_env()
    if settings.base_model or (settings.base_model_dir / "model_index.json").exists():
        return
    print(f"faceharmony-up: building the tiny base pipeline in {settings.base_model_dir}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "faceharmony.clients.operator_cli", "build-tiny-base"], check=True)


def wait_for_migrations(timeout: float = 60) -> None:
    from faceharmony.core.db.connection import close_database, open_database
    from faceharmony.core.db.migrate import pending
    from faceharmony.core.settings import Settings

    settings = Settings.from_env()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db = open_database(settings.resolved_database_url)
        try:
            if not pending(db):
                return
        except Exception:  # noqa: BLE001 - the database may not exist yet
            pass
        finally:
            close_database(db)
        time.sleep(0.5)


def main() -> None:
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop(signum=None, frame=None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ensure_base_model()
    # The server applies the migrations; the trainer waits for them by starting second.
    for name, argv in processes():
        children[name] = subprocess.Popen(argv, env=os.environ.copy())
        print(f"faceharmony-up: started {name} (pid {children[name].pid})", file=sys.stderr, flush=True)
        if name == "server":
            wait_for_migrations()
    exit_code = 0
    while children:
        for name, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[name]
            if not stopping:
                print(f"faceharmony-up: {name} exited with {code}; stopping the rest", file=sys.stderr, flush=True)
                exit_code = code or 1
                stop()
        time.sleep(0.2)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
