"""`faceharmony-server`: runs the API server with settings from FACEHARMONY_* variables until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from faceharmony.core import process
from faceharmony.server.app import serve


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="faceharmony-server", description=__doc__).parse_args(argv)
    return process.run("faceharmony-server", lambda entry: asyncio.run(serve(entry.settings, entry)))


if __name__ == "__main__":
    sys.exit(main())
