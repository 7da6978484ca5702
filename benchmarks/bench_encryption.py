"""The cost of per-person encryption (issue 12) on the paths that carry personal data, against the same paths
without it, in one run.

    .venv/bin/python benchmarks/bench_encryption.py [--rounds 7] [--database sqlite|postgresql]

One in-process API server (tests/support/harness.py: SQLite, or a database in a throwaway PostgreSQL
cluster; local blob folder; the local verifier) with its real keyring (local KEK, SQLite key store). Each
path is timed with the keyring as it is (AES-256-GCM seal/open) and with the keyring's seal and open
replaced, on that same object, by a pass-through that frames the bytes the same way (MAGIC, a zero nonce,
the plaintext, a zero tag) and copies them as much: everything else (the RPC, the database, the blob
files, fsync, image decoding and encoding) is the same code on the same data, so the ratio is the cost of
the encryption itself. Rounds alternate the two modes (A/B/A/B...) and each path reports the median of the
per-round means. Data each mode reads was written in that mode.

Paths (goal: each ratio <= 1.05):

* UploadPhoto: the RPC of a 512x512 JPEG of one face (verification, re-encoding, the photo's new data key
  made, wrapped and stored, the sealed blob, the row).
* trainer photo reads: a model's 8 photos read from the store (opened) and turned into the training tensor
  at 512x512 (trainer/lora.py's prepare_images), as the trainer does before training.
* order worker image writes: one generated 512x512 image (random pixels: the largest PNG) encoded to PNG
  and a JPEG preview, a new data key for the photo, both stored (order_worker/worker.py's encode,
  keyring.new_key and store.create), per image.

The pass-through mode also makes no key (new_key returns a fixed id), so what key creation costs (a KEK
wrap and an fsync'd insert into the key store) is counted against encryption.
* ListGeneratedPhotos: a page of 50 of the user's generated photos (rows only: nothing in them is sealed).
* ListTickets: a page of 50 support tickets (each subject a sealed column, opened on read).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from bench_training import machine_lines

from faceharmony.core import ids
from faceharmony.core.blobstore.base import Role
from faceharmony.core.blobstore.factory import open_blob_store
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import write_transaction
from faceharmony.core.keys import aead
from faceharmony.core.keys.keyring import keyring as installed_keyring
from faceharmony.order_worker.worker import encode
from faceharmony.trainer.lora import prepare_images
from faceharmony.v1 import order_pb2 as o
from faceharmony.v1 import photo_pb2 as p
from faceharmony.v1 import support_pb2 as s
from tests.support import images
from tests.support.harness import start_harness

PAGE = 50
PLAIN_KEY_ID = "0" * 32


def _plain_seal(key_id: str, plaintext: bytes, aad: bytes) -> bytes:
    return aead.MAGIC + bytes(aead.NONCE_BYTES) + bytes(plaintext) + bytes(aead.TAG_BYTES)


def _plain_open(key_id: str, sealed: bytes, aad: bytes) -> bytes:
    return bytes(sealed[len(aead.MAGIC) + aead.NONCE_BYTES : -aead.TAG_BYTES])


@contextmanager
def mode(encrypted: bool):
    """The keyring as it is, or with seal/open replaced by the pass-through on the same object."""
    kr = installed_keyring.obj
    if not encrypted:
        kr.seal, kr.open = _plain_seal, _plain_open  # type: ignore[method-assign]
        kr.new_key = lambda: PLAIN_KEY_ID  # type: ignore[method-assign]  # no key made, wrapped or stored
    try:
        yield
    finally:
        if not encrypted:
            del kr.seal, kr.open, kr.new_key


def timed(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


class Fixture:
    """Per mode: a signed-up user with 8 uploaded photos, 50 tickets and 50 generated photo rows."""

    def __init__(self, h, encrypted: bool, tag: str) -> None:
        self.h = h
        # Signed up with the real keyring in both modes (staff list every waiting-list entry, which the other
        # mode could not open); what each path then reads is made in its own mode.
        self.user = h.sign_up(f"bench-{tag}@example.com", f"Bench {tag}")
        self.key_id = h.db_call(lambda: m.Account.get_by_id(self.user.account_id).key_id)
        with mode(encrypted):
            self.upload = images.one_face()
            photo_ids = [
                h.photos.UploadPhoto(p.UploadPhotoRequest(content=self.upload), metadata=self.user.md).photo.id
                for _ in range(8)
            ]
            self.photos = h.db_call(
                lambda: [(r.blob_id, r.key_id) for r in m.Photo.select().where(m.Photo.id.in_(photo_ids))]
            )
            for i in range(PAGE):
                h.support.CreateTicket(
                    s.CreateTicketRequest(subject=f"Question {i} about my order", body="Hello, a question."),
                    metadata=self.user.md,
                )
            h.db_call(self._generated_rows)
        self.trainer_store = open_blob_store(h.settings, Role.TRAINER)
        self.order_store = open_blob_store(h.settings, Role.ORDER)
        rng = np.random.default_rng(0)
        self.pixels = (rng.random((512, 512, 3)) * 255).astype(np.uint8)

    def _generated_rows(self) -> None:
        """50 generated photos of one order, as the order worker records them (blob ids only: never read)."""
        from faceharmony.core.jobs import styles

        now = self.h.clock.now()
        with write_transaction(self.h.db):
            order = m.Order.create(
                id=ids.new_id(),
                account=self.user.account_id,
                key_id=self.key_id,
                style_id=styles.STYLES[0].id,
                count=PAGE,
                images_total=PAGE,
                images_done=PAGE,
                credits_charged=0,
                state="completed",
                max_attempts=1,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
            for i in range(PAGE):
                image = m.OrderImage.create(
                    id=ids.new_id(),
                    order=order.id,
                    position=i,
                    model_id=ids.new_id(),
                    model_version=1,
                    seed=i,
                    state="done",
                    updated_at=now,
                )
                m.GeneratedPhoto.create(
                    id=ids.new_id(),
                    account=self.user.account_id,
                    key_id=self.key_id,
                    order=order.id,
                    image=image.id,
                    model_id=image.model_id,
                    blob_id=ids.new_id(),
                    preview_blob_id=ids.new_id(),
                    content_type="image/png",
                    size_bytes=1,
                    width=512,
                    height=512,
                    state="available",
                    created_at=now,
                )

    # the paths
    def upload_photo(self) -> None:
        self.h.photos.UploadPhoto(p.UploadPhotoRequest(content=self.upload), metadata=self.user.md)

    def trainer_reads(self) -> None:
        jpegs = [self.trainer_store.read("photos", blob_id, key_id=key_id) for blob_id, key_id in self.photos]
        prepare_images(jpegs, 512)  # production's training resolution (SD 1.5)

    def worker_writes(self) -> None:
        png, jpeg = encode(self.pixels, 256)
        key_id = installed_keyring.new_key()  # the generated photo's own key, as the worker makes it
        self.order_store.create("generated", png, "image/png", key_id=key_id)
        self.order_store.create("generated", jpeg, "image/jpeg", key_id=key_id)

    def list_generated(self) -> None:
        reply = self.h.orders.ListGeneratedPhotos(o.ListGeneratedPhotosRequest(page_size=PAGE), metadata=self.user.md)
        assert len(reply.generated_photos) == PAGE

    def list_tickets(self) -> None:
        reply = self.h.support.ListTickets(s.ListTicketsRequest(page_size=PAGE), metadata=self.user.md)
        assert len(reply.tickets) == PAGE and reply.tickets[0].subject.startswith("Question")


PATHS = {
    "UploadPhoto (RPC)": ("upload_photo", 6),
    "trainer photo reads (8 photos)": ("trainer_reads", 10),
    "order worker image writes (1 image)": ("worker_writes", 10),
    "ListGeneratedPhotos (page of 50)": ("list_generated", 20),
    "ListTickets (page of 50, sealed subjects)": ("list_tickets", 20),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()

    import tempfile

    root = Path(tempfile.mkdtemp(prefix="bench-encryption-"))
    cluster = None
    if args.database == "sqlite":
        url = f"sqlite:///{root / 'bench.sqlite3'}"
    else:
        from faceharmony.core.db.connection import close_database, open_database
        from faceharmony.core.db.migrate import migrate
        from tests.support.postgres import PostgresCluster, find_bindir

        bindir = find_bindir()
        if bindir is None:
            print("PostgreSQL server binaries not installed", file=sys.stderr)
            return 2
        cluster = PostgresCluster(bindir).start()
        url = cluster.url(cluster.create_database())
        db = open_database(url)
        migrate(db)
        close_database(db)
    h = start_harness(root / "data", url, upload_max_bytes=10 * 1024 * 1024)
    try:
        fixtures = {True: Fixture(h, True, "enc"), False: Fixture(h, False, "plain")}
        results: dict[str, dict[bool, list[float]]] = {name: {True: [], False: []} for name in PATHS}
        for method, _n in PATHS.values():  # warm-up, untimed
            for encrypted in (True, False):
                with mode(encrypted):
                    getattr(fixtures[encrypted], method)()
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for name, (method, n) in PATHS.items():
                for encrypted in order:
                    with mode(encrypted):
                        results[name][encrypted].append(timed(getattr(fixtures[encrypted], method), n))
    finally:
        h.stop()
        if cluster is not None:
            cluster.stop()

    import cryptography
    from cryptography.hazmat.backends import default_backend

    for line in machine_lines(torch.device("cpu"))[:1]:
        print(line)
    print(f"cryptography {cryptography.__version__} ({default_backend().openssl_version_text()})")
    print(f"database: {args.database}; rounds: {args.rounds} (median of per-round means)")
    print(f"{'path':46} {'encrypted ms':>13} {'plain ms':>10} {'ratio':>7}")
    worst = 0.0
    for name, by_mode in results.items():
        enc, plain = statistics.median(by_mode[True]) * 1000, statistics.median(by_mode[False]) * 1000
        ratio = enc / plain
        worst = max(worst, ratio)
        print(f"{name:46} {enc:13.3f} {plain:10.3f} {ratio:7.3f}")
    print(f"worst ratio: {worst:.3f} (goal <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
