"""`faceharmony-order-worker`: makes the images of paid orders until SIGTERM/SIGINT (the order in hand is handed
back with what it has made, not lost or made twice).

    faceharmony-order-worker           loop: claim, generate, store, repeat
    faceharmony-order-worker --once    process at most one order, then exit
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from faceharmony.core import process

log = logging.getLogger("faceharmony.order_worker")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faceharmony-order-worker", description="FaceHarmony order worker")
    parser.add_argument("--once", action="store_true", help="process at most one order, then exit")
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="exit 0 if the running worker's heartbeat file is fresh, else 1 (liveness)",
    )
    parser.add_argument(
        "--ready", action="store_true", help="with --healthcheck: Triton also answered the worker's last check"
    )
    args = parser.parse_args(argv)
    if args.healthcheck or args.ready:
        from faceharmony.core.heartbeat import healthcheck

        return healthcheck("faceharmony-order-worker", ready=args.ready)
    return process.run("faceharmony-order-worker", lambda entry: _run(entry, once=args.once))


def _run(entry: process.Entry, *, once: bool) -> int:
    from faceharmony.core import preflight
    from faceharmony.core.blobstore.base import Role

    # Keys, database, migrations, bucket and Triton checked before anything is written (core/preflight.py).
    preflight.check(entry.settings, role=Role.ORDER, require_migrated=True, triton=True, stopping=entry.stopping)
    if entry.stopping.is_set():  # told to stop while waiting for Triton (the launcher stopping everything)
        return 0
    from faceharmony.order_worker.worker import OrderWorker

    worker = OrderWorker(entry.settings)
    try:
        entry.require_migrated(worker.db)
        from faceharmony.core import metrics
        from faceharmony.core.db.models import Order

        metrics.register_queues(
            "orders", metrics.QueueCollector(metrics.job_queue_reader(worker.db, {"orders": Order}, worker.clock))
        )
        metrics.serve(entry.settings, entry.prog)
        entry.on_stop(lambda _signum: worker.shutting_down.set())
        if once:
            worker.run_once()
        else:
            from faceharmony.core.heartbeat import Heartbeat

            beat = Heartbeat(entry.settings, entry.prog).start(TritonWatch(entry.settings))
            try:
                worker.run_forever()
            finally:
                beat.stop()
    finally:
        worker.close()
    return 0


class TritonWatch:
    """The heartbeat's readiness: at least one Triton replica live with its model ready, checked at every beat
    (the keys of a replica that is down fail over to the next: order_worker/routing.py). All of them going away
    and one coming back are logged once each (the images in hand meanwhile wait and retry, keeping their orders)."""

    def __init__(self, settings) -> None:
        from faceharmony.core.jobs.evictions import replicas

        self.urls, self.model = replicas(settings), settings.triton_model
        self.down: str | None = None

    def __call__(self) -> tuple[bool, str]:
        from faceharmony.core.preflight import replicas_state

        state = replicas_state(self.urls, self.model)
        where = ", ".join(self.urls)
        if state is not None and self.down is None:
            log.warning("Triton unavailable: images wait until it is back", extra={"triton_url": where, "state": state})
        elif state is None and self.down is not None:
            log.info("Triton available again", extra={"triton_url": where})
        self.down = state
        return (state is None, "triton ready" if state is None else f"Triton at {where}: {state}")


if __name__ == "__main__":
    sys.exit(main())
