"""`faceharmony-triton`: the nvidia-pytriton wheel's Triton server on `triton_models/`, in the foreground.

The server runs as a child that gets SIGTERM if this launcher dies; SIGTERM/SIGINT are passed on to it, and the
shared-memory regions a killed server left behind are swept before and after (triton_launcher/server.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from faceharmony.core import process
from faceharmony.core.children import die_with_parent
from faceharmony.triton_launcher.server import (
    DEFAULT_MODELS,
    DEFAULT_REPOSITORY,
    TRITON_UMASK,
    TritonUnavailable,
    prepare_backend_dir,
    prepare_repository_view,
    server_command,
    server_env,
)
from faceharmony.triton_launcher.shm import ShmLease, sweep_regions


def main(argv: Sequence[str] | None = None) -> int:
    """`faceharmony-triton`: the Triton server on the model repository, in the foreground."""
    parser = argparse.ArgumentParser(prog="faceharmony-triton", description=main.__doc__)
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--model", action="append", dest="models", help="model to load (repeatable)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--address",
        default=None,
        help="address of the gRPC and metrics listeners (default: FACEHARMONY_TRITON_LISTEN_ADDRESS)",
    )
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        help="the tritonserver binary (default: the nvidia-pytriton wheel's; NGC: /opt/tritonserver/bin/tritonserver)",
    )
    parser.add_argument(
        "--backend-directory",
        type=Path,
        default=None,
        help="Triton's backends (default: the wheel's Python backend, linked under the data folder; "
        "NGC: /opt/tritonserver/backends)",
    )
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="exit 0 when the Triton server on --grpc-port (loopback) is live and ready with its models, else 1",
    )
    args = parser.parse_args(argv)
    if args.healthcheck:
        return healthcheck(args)
    # The settings are read here (a bad FACEHARMONY_* variable fails now, not inside the model).
    return process.run("faceharmony-triton", lambda entry: _serve(entry, args))


def _serve(entry: process.Entry, args: argparse.Namespace) -> int:
    settings = entry.settings
    shm_locks = settings.data_dir / "triton" / "shm"
    try:
        if args.backend_directory is not None:
            if not (args.backend_directory / "python").is_dir():
                raise TritonUnavailable(f"no Python backend in {args.backend_directory}")
            backend_dir = args.backend_directory
        else:
            backend_dir = prepare_backend_dir(settings.data_dir / "triton" / "backends")
        if args.tritonserver is not None and not os.access(args.tritonserver, os.X_OK):
            raise TritonUnavailable(f"no tritonserver at {args.tritonserver}")
        view = prepare_repository_view(
            args.model_repository, args.models or DEFAULT_MODELS, settings.data_dir / "triton" / "repositories"
        )
        sweep_regions(shm_locks)  # what a SIGKILLed earlier launch left in /dev/shm
        lease = ShmLease(shm_locks)
        cmd = server_command(
            view,
            backend_dir,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            address=args.address or settings.triton_listen_address,
            log_verbose=args.log_verbose,
            extra_args=[lease.backend_arg],
            binary=args.tritonserver,
        )
    except TritonUnavailable as exc:
        raise process.Refused(str(exc)) from exc
    try:
        # If this wrapper is SIGKILLed, tritonserver gets SIGTERM (not orphaned holding the ports).
        server = subprocess.Popen(
            cmd,
            env=server_env(wheel=args.tritonserver is None),
            umask=TRITON_UMASK,
            pass_fds=(lease.fd,),
            preexec_fn=die_with_parent(),
        )
    finally:
        lease.handed_over()

    def forward(signum: int) -> None:
        if server.poll() is None:
            server.send_signal(signum)

    entry.on_stop(forward)
    status = server.wait()
    sweep_regions(shm_locks)  # a server that died without unlinking its regions (SIGKILL, crash)
    return status


def healthcheck(args: argparse.Namespace) -> int:
    """One line on stdout: the server on --grpc-port (the listen address, a wildcard as loopback) is live and
    ready and every model (--model, default DEFAULT_MODELS) is ready; no model-control call is made."""
    from faceharmony.core.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"faceharmony-triton: unhealthy: {exc}", flush=True)
        return 1
    host = args.address or settings.triton_listen_address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)
    url = f"[{host}]:{args.grpc_port}" if ":" in host else f"{host}:{args.grpc_port}"
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    models = args.models or list(DEFAULT_MODELS)
    client = grpcclient.InferenceServerClient(url)
    try:
        if not client.is_server_live(client_timeout=3) or not client.is_server_ready(client_timeout=3):
            print(f"faceharmony-triton: unhealthy: {url}: server not ready", flush=True)
            return 1
        missing = [m for m in models if not client.is_model_ready(m, client_timeout=3)]
    except InferenceServerException as exc:
        status = str(exc.status() or "").rsplit(".", 1)[-1] or "UNAVAILABLE"
        print(f"faceharmony-triton: unhealthy: {url}: {status}", flush=True)
        return 1
    finally:
        client.close()
    if missing:
        print(f"faceharmony-triton: unhealthy: {url}: models not ready: {', '.join(missing)}", flush=True)
        return 1
    print(f"faceharmony-triton: healthy: {url}: {', '.join(models)} ready", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
