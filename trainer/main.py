"""`faceharmony-trainer`: not implemented yet; the trainer issue builds it. Exits 3 so no supervisor mistakes it for a running trainer."""

from __future__ import annotations

import sys


def main() -> None:
    print("faceharmony-trainer: not implemented yet (the trainer issue builds it)", file=sys.stderr)
    sys.exit(3)
