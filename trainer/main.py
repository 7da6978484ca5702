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
    args = parser.parse_args(argv)
    return process.run("faceharmony-trainer", lambda entry: _run(entry, once=args.once))


def _run(entry: process.Entry, *, once: bool) -> int:
    from faceharmony.trainer.worker import Trainer  # torch and diffusers: after the settings are known good

    trainer = Trainer(entry.settings)
    entry.require_migrated(trainer.db)
    entry.on_stop(lambda _signum: trainer.shutting_down.set())
    if once:
        trainer.run_once()
    else:
        trainer.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
