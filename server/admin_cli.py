"""`faceharmony-admin`: operator commands run on the server side, against the database named by FACEHARMONY_* settings.

faceharmony-admin migrate                      apply pending schema migrations
faceharmony-admin create-staff EMAIL NAME --role support|admin
faceharmony-admin waitlist [--pending]         list the waiting list
faceharmony-admin approve ENTRY_ID             approve an entry (queues the approval email)
faceharmony-admin deliver-emails               send queued emails once (the server also does this)
faceharmony-admin build-tiny-base [--out DIR]  build the tiny random-weight base pipeline (default: the
                                               FACEHARMONY_BASE_MODEL folder) for development and tests
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence

from faceharmony.core import process
from faceharmony.core.blobstore.reseal import reseal_legacy_blobs
from faceharmony.core.clock import SystemClock
from faceharmony.core.crypto import Hasher
from faceharmony.core.db.connection import open_database
from faceharmony.core.db.migrate import migrate
from faceharmony.core.email.queue import deliver_due
from faceharmony.core.email.transports import make_transport
from faceharmony.core.keys import keyring as keyring_module
from faceharmony.core.keys.factory import install_keyring, rotation_periods
from faceharmony.server.context import AppContext
from faceharmony.server.errors import ApiError
from faceharmony.server.logic import accounts, admin


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faceharmony-admin", description="FaceHarmony operator commands")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply pending schema migrations")
    c = sub.add_parser("create-staff", help="create a support or admin account (or give an account that role)")
    c.add_argument("email")
    c.add_argument("name")
    c.add_argument("--role", choices=["support", "admin"], required=True)
    sub.add_parser("waitlist", help="list the waiting list").add_argument("--pending", action="store_true")
    sub.add_parser("approve", help="approve a waiting-list entry").add_argument("entry_id")
    sub.add_parser("deliver-emails", help="send queued emails once")
    c = sub.add_parser(
        "rotate-kek",
        help="make a new primary KEK version now and rewrap every data key (the retention daemon does it on"
        " schedule); old versions are destroyed once replaced longer than the backup window",
    )
    c.add_argument(
        "--destroy-now",
        action="store_true",
        help="destroy every older KEK version at once (a suspected KEK exposure): backups of the key store taken"
        " before now no longer open",
    )
    c = sub.add_parser("build-tiny-base", help="build the tiny random-weight base pipeline (no download)")
    c.add_argument("--out", help="folder (default: the configured base model folder)")
    c.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return process.run("faceharmony-admin", lambda entry: _command(entry, args), configure_logs=False)


def _command(entry: process.Entry, args: argparse.Namespace) -> int:
    settings = entry.settings
    if args.command == "build-tiny-base":
        from pathlib import Path

        from faceharmony.core.diffusion.pipeline import build_tiny_pipeline

        out = Path(args.out) if args.out else settings.base_model_dir
        build_tiny_pipeline(out, seed=args.seed)
        print(f"tiny base pipeline written to {out}")
        return 0
    if args.command != "rotate-kek":
        from faceharmony.core import preflight
        from faceharmony.core.blobstore.base import Role

        # Keys, database and (for migrate, which reseals blobs) the bucket checked before anything is written.
        preflight.check(settings, role=Role.MIGRATION if args.command == "migrate" else None)
    keyring = install_keyring(settings)  # the sealed columns (and migration 0008) need the data keys
    if args.command == "rotate-kek":
        rotation, window = rotation_periods(settings)
        report = keyring.rotate(rotation=rotation, backup_window=window, force=True)
        print(f"primary KEK version {report.rotated_to}; {report.rewrapped} data keys rewrapped", flush=True)
        destroyed = report.destroyed
        if args.destroy_now:
            # Keys other processes were making under the old primary are stored within the grace; then every
            # older version goes (the whole store is checked first: a version a key still names stays).
            grace = keyring_module.WRAP_GRACE
            print(f"waiting {grace.total_seconds():.0f} s for keys being made under the old version", flush=True)
            time.sleep(grace.total_seconds())
            again = keyring.rotate(rotation=rotation, backup_window=dt.timedelta(0))
            destroyed = destroyed + again.destroyed
            print(f"{again.rewrapped} more data keys rewrapped")
        print("destroyed: " + (", ".join(destroyed) or "none (older versions wait for the backup window)"))
        return 0
    db = open_database(settings.resolved_database_url, settings.database_pool_size)
    clock = SystemClock()
    app = AppContext(settings=settings, db=db, clock=clock, hasher=Hasher(settings.secret()))
    try:
        if args.command == "migrate":
            applied = migrate(db)
            print("applied: " + ", ".join(applied) if applied else "nothing to apply")
            resealed = sum(reseal_legacy_blobs(db, settings).values())  # the blobs an older version left plain
            if resealed:
                print(f"sealed {resealed} blobs left plain by an older version")
            return 0
        entry.require_migrated(db)
        if args.command == "create-staff":
            account = accounts.create_staff(app, args.email, args.name, args.role)
            print(f"{account.id} {account.role}")
        elif args.command == "waitlist":
            rows, _ = admin.list_waitlist(app, 1 if args.pending else 0, 200, "")
            for row in rows:
                print(f"{row.id}\t{row.state}\t{row.created_at:%Y-%m-%d}\t{row.name}\t{row.email}")
        elif args.command == "approve":
            approved = admin.approve_waitlist_entry(app, None, args.entry_id)
            print(f"{approved.id} approved")
        elif args.command == "deliver-emails":
            print(f"sent {deliver_due(db, make_transport(settings), clock, settings.email_from, limit=500)}")
    except ApiError as exc:
        print(f"faceharmony-admin: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
