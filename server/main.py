"""`faceharmony-server`: runs the API server with settings from FACEHARMONY_* variables until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from faceharmony.core import process
from faceharmony.server.app import serve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faceharmony-server", description=__doc__)
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="ask the server on FACEHARMONY_LISTEN (0.0.0.0/:: as loopback) for its gRPC health: exit 0 SERVING, else 1",
    )
    if parser.parse_args(argv).healthcheck:
        return healthcheck()
    return process.run("faceharmony-server", _serve)


def _serve(entry: process.Entry) -> None:
    from faceharmony.core import preflight
    from faceharmony.core.blobstore.base import Role

    # Keys, database, migrations and bucket checked before anything is written (core/preflight.py).
    preflight.check(entry.settings, role=Role.API, require_migrated=not entry.settings.auto_migrate)
    from faceharmony.core import metrics

    metrics.serve(entry.settings, entry.prog)
    asyncio.run(serve(entry.settings, entry))


HEALTH_DEADLINE_SECONDS = 3.0


def loopback_target(listen: str) -> str:
    """FACEHARMONY_LISTEN as an address to dial: a wildcard host (0.0.0.0, ::, [::], empty) is the loopback."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    return f"{host}:{port}"


def healthcheck() -> int:
    """One line on stdout; exit 0 when grpc.health.v1 answers SERVING within HEALTH_DEADLINE_SECONDS."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from faceharmony.core.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"faceharmony-server: unhealthy: {exc}", flush=True)
        return 1
    target = loopback_target(settings.listen)
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_SECONDS
            )
        except grpc.RpcError as exc:
            print(f"faceharmony-server: unhealthy: {target}: {exc.code().name}", flush=True)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"faceharmony-server: {'healthy' if status == 'SERVING' else 'unhealthy'}: {target}: {status}", flush=True)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
