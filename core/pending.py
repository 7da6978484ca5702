"""Entry points of processes that later issues build (order worker, retention daemon). They say so and exit 3."""

from __future__ import annotations

import sys


def _not_yet(name: str, issue: str) -> None:
    print(f"{name}: not implemented yet ({issue} builds it)", file=sys.stderr)
    sys.exit(3)


def retention_main() -> None:
    _not_yet("faceharmony-retention", "the retention issue")
