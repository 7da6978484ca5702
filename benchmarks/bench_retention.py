"""Retention cost follows what is due, not table size: purge 10 000 due items among 100 000 and among 1 000 000 rows.

    .venv/bin/python benchmarks/bench_retention.py [--due 10000] [--sizes 100000,1000000] [--database sqlite|postgresql]

For each size, a fresh database (SQLite in WAL mode, or a database in a throwaway
PostgreSQL cluster started the way the test suite starts one; migrated) and local blob folder
are filled with background rows that are not due (live sessions and sign-in
codes, photos attached to a model), bulk-inserted with insert_many in chunks,
plus the due items: photos marked deleted and rejected generated photos past
purge_after (each with real blob files), expired sessions and expired sign-in
codes. One timed `Retention.run_once` (every policy, the orphan sweep and the
overdue counts) then purges them. It checks that exactly the due items went,
and prints both times, their ratio (goal <= 1.5) and items purged per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import tempfile
import time
from pathlib import Path

from faceharmony.core import ids
from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.local import LocalBlobStore
from faceharmony.core.clock import ManualClock
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import close_database, open_database
from faceharmony.core.db.migrate import migrate
from faceharmony.core.keys.factory import install_keyring
from faceharmony.core.settings import Settings
from faceharmony.retention.daemon import Retention

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
CHUNK = 1000


def _insert(model, rows) -> None:
    for i in range(0, len(rows), CHUNK):
        model.insert_many(rows[i : i + CHUNK]).execute()


def build(db, store: LocalBlobStore, creator_photos, creator_generated, total: int, due: int, keyring) -> None:
    """total rows in all, of which `due` are due; the rest split over sessions, codes and attached photos."""
    past, future = NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=30)
    key_id = keyring.new_key()  # the account's: its rows carry it, its blobs are sealed with it
    with db.atomic():
        m.Account.create(
            id="a" * 32,
            key_id=key_id,
            email="bench@example.com",
            email_hmac="h" * 64,
            name="Bench",
            is_16_or_older=True,
            created_at=past,
            updated_at=past,
        )
        model_id = "b" * 32
        m.UserModel.create(
            id=model_id,
            account="a" * 32,
            key_id=key_id,
            display_name="m",
            state="ready",
            trigger_token="sks",
            created_at=past,
            updated_at=past,
        )
        order_id = "c" * 32
        m.Order.create(
            id=order_id,
            account="a" * 32,
            key_id=key_id,
            style_id="s",
            count=1,
            state="completed",
            images_total=1,
            credits_charged=1,
            max_attempts=1,
            next_attempt_at=past,
            created_at=past,
            updated_at=past,
        )
    due_photos, due_generated = due * 3 // 10, due * 2 // 10
    due_sessions = (due - due_photos - due_generated) // 2
    due_codes = due - due_photos - due_generated - due_sessions
    background = total - due
    bg_sessions, bg_codes = background * 4 // 10, background * 3 // 10
    bg_photos = background - bg_sessions - bg_codes

    def photo(blob_id, deleted):
        return dict(
            id=ids.new_id(),
            account="a" * 32,
            key_id=key_id,
            blob_id=blob_id,
            width=8,
            height=8,
            size_bytes=3,
            created_at=past,
            model_id=None if deleted else model_id,
            deleted_at=past if deleted else None,
        )

    def session(expires):
        return dict(id=ids.new_id(), token_hash=ids.new_id() * 2, account="a" * 32, created_at=past, expires_at=expires)

    def code(expires):
        return dict(id=ids.new_id(), email_hmac="h" * 64, code_hash="x", created_at=past, expires_at=expires)

    with db.atomic():
        _insert(m.Session, [session(future) for _ in range(bg_sessions)] + [session(past) for _ in range(due_sessions)])
        _insert(m.SignInCode, [code(future) for _ in range(bg_codes)] + [code(past) for _ in range(due_codes)])
        _insert(m.Photo, [photo(ids.new_id(), False) for _ in range(bg_photos)])
        _insert(m.Photo, [photo(creator_photos.create("photos", b"p", key_id=key_id), True) for _ in range(due_photos)])
        images = [
            dict(
                id=ids.new_id(),
                order=order_id,
                position=i,
                model_id=model_id,
                model_version=1,
                seed=i,
                state="done",
                updated_at=past,
            )
            for i in range(due_generated)
        ]
        _insert(m.OrderImage, images)
        _insert(
            m.GeneratedPhoto,
            [
                dict(
                    id=ids.new_id(),
                    account="a" * 32,
                    key_id=key_id,
                    order=order_id,
                    image=img["id"],
                    model_id=model_id,
                    blob_id=creator_generated.create("generated", b"g", key_id=key_id),
                    preview_blob_id=creator_generated.create("generated", b"p", key_id=key_id),
                    content_type="image/png",
                    size_bytes=1,
                    width=8,
                    height=8,
                    state="rejected",
                    created_at=past,
                    reject_time=past,
                    purge_after=past,
                )
                for img in images
            ],
        )


def run_size(total: int, due: int, cluster=None) -> tuple[float, int, float]:
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        data = Path(tmp)
        url = cluster.url(cluster.create_database()) if cluster is not None else f"sqlite:///{data / 'db.sqlite3'}"
        settings = dataclasses.replace(Settings(), data_dir=data, database_url=url, secret_key="bench")
        keyring = install_keyring(settings)
        db = open_database(settings.resolved_database_url)
        migrate(db)
        t0 = time.perf_counter()
        build(
            db,
            store := LocalBlobStore(settings.blob_dir, Role.RETENTION),
            LocalBlobStore(settings.blob_dir, Role.API),
            LocalBlobStore(settings.blob_dir, Role.ORDER),
            total,
            due,
            keyring,
        )
        built = time.perf_counter() - t0
        rows = sum(model.select().count() for model in m.ALL_MODELS)
        db.execute_sql("ANALYZE")
        retention = Retention(settings, db, store, clock=ManualClock(NOW))
        t0 = time.perf_counter()
        purged = retention.run_once()
        seconds = time.perf_counter() - t0
        count = sum(v for k, v in purged.items() if not k.startswith("orphan_"))
        assert count == due, purged
        assert sum(1 for kind in ("photos", "generated") for _ in store.list(kind)) == 0
        assert (
            sum(model.select().count() for model in m.ALL_MODELS) == rows - due
        )  # (no account or model purged: no RETENTION_RUN row)
        close_database(db)
        print(
            f"  {total:>9} rows: built in {built:6.1f} s; purged {count} items in {seconds:6.3f} s ({count / seconds:8.0f} items/s)"
        )
        return seconds, count, built


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated total row counts")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    cluster = None
    if args.database == "postgresql":
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.support.postgres import PostgresCluster, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL server binaries are not installed")
        cluster = PostgresCluster(bindir).start()
    print(f"retention benchmark: {args.due} due items; {os.cpu_count()} CPUs ({cpu_model()}); {args.database}")
    try:
        results = {size: run_size(size, args.due, cluster) for size in sizes}
    finally:
        if cluster is not None:
            cluster.stop()
    small, large = results[min(sizes)][0], results[max(sizes)][0]
    print(f"ratio {max(sizes)} / {min(sizes)} rows: {large / small:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
