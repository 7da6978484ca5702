"""`faceharmony-trainer`: runs training jobs until SIGTERM/SIGINT (the job in hand is handed back, not lost).

    faceharmony-trainer           loop: claim, train, repeat
    faceharmony-trainer --once    run at most one job, then exit
"""

from __future__ import annotations

import argparse
import signal
import sys

from faceharmony.core import logs
from faceharmony.core.db.migrate import pending
from faceharmony.core.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="faceharmony-trainer", description="FaceHarmony trainer")
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"faceharmony-trainer: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    from faceharmony.trainer.worker import Trainer

    trainer = Trainer(settings)
    if pending(trainer.db):
        print("faceharmony-trainer: the database needs migrations (faceharmony-admin migrate)", file=sys.stderr)
        sys.exit(2)

    def stop(signum, frame) -> None:
        trainer.shutting_down.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.once:
        trainer.run_once()
    else:
        trainer.run_forever()


if __name__ == "__main__":
    main()
