"""`faceharmony-server`: runs the API server with settings from FACEHARMONY_* variables."""

from __future__ import annotations

import sys

from faceharmony.core.settings import Settings, SettingsError
from faceharmony.server.app import run


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"faceharmony-server: {exc}", file=sys.stderr)
        sys.exit(2)
    run(settings)


if __name__ == "__main__":
    main()
