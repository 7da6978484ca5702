"""`faceharmony-trainer`: runs training jobs until SIGTERM/SIGINT (the job in hand is handed back, not lost).

faceharmony-trainer           loop: claim, train, repeat
faceharmony-trainer --once    run at most one job, then exit
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from faceharmony.core import process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faceharmony-trainer", description="FaceHarmony trainer")
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    parser.add_argument(
        "--healthcheck", action="store_true", help="exit 0 if the running trainer's heartbeat file is fresh, else 1"
    )
    args = parser.parse_args(argv)
    if args.healthcheck:
        from faceharmony.core.heartbeat import healthcheck

        return healthcheck("faceharmony-trainer")
    return process.run("faceharmony-trainer", lambda entry: _run(entry, once=args.once))


def _run(entry: process.Entry, *, once: bool) -> int:
    from faceharmony.core import preflight
    from faceharmony.core.blobstore.base import Role

    # Keys, database, migrations and bucket checked before anything is written (core/preflight.py).
    preflight.check(entry.settings, role=Role.TRAINER, require_migrated=True)
    from faceharmony.trainer.worker import Trainer  # torch and diffusers: after the settings are known good

    trainer = Trainer(entry.settings)
    entry.require_migrated(trainer.db)
    from faceharmony.core import metrics
    from faceharmony.core.db.models import TrainingJob

    metrics.register_queues(
        "training",
        metrics.QueueCollector(metrics.job_queue_reader(trainer.db, {"training": TrainingJob}, trainer.clock)),
    )
    metrics.serve(entry.settings, entry.prog)
    entry.on_stop(lambda _signum: trainer.shutting_down.set())
    if once:
        trainer.run_once()
        return 0
    from faceharmony.core.heartbeat import Heartbeat

    beat = Heartbeat(entry.settings, entry.prog).start()  # from its own thread: fresh during a long job too
    try:
        trainer.run_forever()
    finally:
        beat.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
