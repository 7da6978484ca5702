"""`faceharmony-retention`: the retention daemon, which enforces every deletion promise (retention/daemon.py).

faceharmony-retention                  loop, a cycle every FACEHARMONY_RETENTION_INTERVAL_SECONDS
faceharmony-retention --once           one cycle (a cron job); exit 0 when every policy ran
faceharmony-retention --dry-run        print what a cycle would purge, by kind; touch nothing
faceharmony-retention --now 2026-03-01T00:00:00Z --once   evaluate the policies' deadlines as of that moment
--metrics-port 9464 [--metrics-host ADDR] / --metrics-file PATH   Prometheus metrics (HTTP or textfile)
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from faceharmony.core import preflight, process
from faceharmony.core.blobstore.base import Role
from faceharmony.core.db.connection import close_database, open_database
from faceharmony.core.keys.factory import install_keyring
from faceharmony.retention.daemon import Retention, open_store

log = logging.getLogger("faceharmony.retention")


def format_dry_run(report: dict[str, dict[str, int]], now: dt.datetime) -> str:
    lines = [f"retention dry run as of {now.strftime('%Y-%m-%dT%H:%M:%SZ')}: nothing was changed", "due, by kind:"]
    lines += [f"  {kind:<22} {n}" for kind, n in report["due"].items()]
    lines.append("rows inside the due accounts and models, by table:")
    lines += [f"  {table:<40} {n}" for table, n in sorted(report["contents"].items())] or ["  (none)"]
    lines.append("orphan blobs and temporary files of unfinished writes past the margin now (real time), by kind:")
    lines += [f"  {'orphan_' + kind + '_blobs':<22} {n}" for kind, n in report["orphan_blobs"].items()]
    lines += [f"  {kind:<22} {n}" for kind, n in report["temporary"].items()]
    lines.append("data keys no row names, past the margin now (the key sweep shreds them):")
    lines += [f"  {kind:<22} {n}" for kind, n in report.get("orphan_keys", {}).items()]
    return "\n".join(lines)


def parse_time(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="faceharmony-retention", description="Enforces the deletion promises (retention daemon)."
    )
    parser.add_argument("--once", action="store_true", help="run one cycle and exit (for a cron job)")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between cycles (default: FACEHARMONY_RETENTION_INTERVAL_SECONDS)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be purged, by kind; change nothing")
    parser.add_argument(
        "--now",
        type=parse_time,
        default=None,
        help="evaluate the policies' deadlines as of this ISO-8601 time (implies one cycle); the orphan sweep and audit times stay real",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on HOST:PORT/metrics (--metrics-host)"
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    parser.add_argument(
        "--metrics-file", type=Path, default=None, help="write Prometheus metrics to this file after each cycle"
    )
    parser.add_argument(
        "--healthcheck", action="store_true", help="exit 0 if the running daemon's heartbeat file is fresh, else 1"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.healthcheck:
        from faceharmony.core.heartbeat import healthcheck

        return healthcheck("faceharmony-retention")
    return process.run("faceharmony-retention", lambda entry: _run(entry, args))


def _run(entry: process.Entry, args: argparse.Namespace) -> int:
    settings = entry.settings
    # Keys, database, migrations and bucket checked before anything is written (core/preflight.py).
    preflight.check(settings, role=Role.RETENTION, require_migrated=not settings.auto_migrate)
    db = open_database(settings.resolved_database_url, pool_size=2)
    try:
        keyring = install_keyring(settings)  # before the migrations, which seal what an older version left plain
        entry.require_migrated(db, apply=settings.auto_migrate)
        store, soft_delete, versioned = open_store(settings)
        retention = Retention(
            settings, db, store, soft_delete_seconds=soft_delete, keeps_deleted_versions=versioned, keyring=keyring
        )
        if args.dry_run:
            now = args.now or retention.clock.now()
            print(format_dry_run(retention.dry_run(now), now))
            return 0
        if args.metrics_port is not None:
            server = retention.metrics.serve(args.metrics_port, args.metrics_host)
        elif settings.metrics_port and not (args.once or args.now is not None):  # the setting every process reads
            server = retention.metrics.serve(settings.metrics_port, settings.metrics_address)
        else:
            server = None
        try:
            if args.once or args.now is not None:
                return _cycle(retention, args)
            from faceharmony.core.heartbeat import Heartbeat

            beat = Heartbeat(settings, entry.prog).start()  # from its own thread: fresh during the sleeps too
            try:
                return _loop(retention, args, entry, args.interval or settings.retention_interval_seconds)
            finally:
                beat.stop()
        finally:
            if server is not None:
                server.shutdown()
    finally:
        close_database(db)


def _cycle(retention: Retention, args: argparse.Namespace) -> int:
    errors_before = retention.metrics.total("errors_total")
    purged = retention.run_once(args.now, sweep=True)
    if args.metrics_file is not None:
        retention.metrics.write(args.metrics_file)
    print("purged: " + (", ".join(f"{k}={v}" for k, v in purged.items() if v) or "nothing"))
    if retention.metrics.total("purges_not_final_total"):
        print("not final: the bucket keeps noncurrent versions of the deleted blobs (object versioning is on)")
        return 1
    return 1 if retention.metrics.total("errors_total") > errors_before else 0


def _loop(retention: Retention, args: argparse.Namespace, entry: process.Entry, interval: float) -> int:
    log.info("retention daemon started", extra={"interval_seconds": interval})
    while not entry.stopping.is_set():
        try:
            retention.run_once()
        except Exception:  # the database may be away for a moment: try again next cycle
            log.exception("retention cycle failed")
            retention.metrics.inc("errors_total", "cycle")
        if args.metrics_file is not None:
            retention.metrics.write(args.metrics_file)
        entry.stopping.wait(interval)
    log.info("retention daemon stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
