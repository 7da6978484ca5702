"""`faceharmony-order-worker`: makes the images of paid orders until SIGTERM/SIGINT (the order in hand is handed
back with what it has made, not lost or made twice).

    faceharmony-order-worker           loop: claim, generate, store, repeat
    faceharmony-order-worker --once    process at most one order, then exit
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from faceharmony.core import process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faceharmony-order-worker", description="FaceHarmony order worker")
    parser.add_argument("--once", action="store_true", help="process at most one order, then exit")
    args = parser.parse_args(argv)
    return process.run("faceharmony-order-worker", lambda entry: _run(entry, once=args.once))


def _run(entry: process.Entry, *, once: bool) -> int:
    from faceharmony.order_worker.worker import OrderWorker

    worker = OrderWorker(entry.settings)
    try:
        entry.require_migrated(worker.db)
        entry.on_stop(lambda _signum: worker.shutting_down.set())
        if once:
            worker.run_once()
        else:
            worker.run_forever()
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
