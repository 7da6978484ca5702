"""Permission modes of a folder tree, for the tests that the data folder stays private (folders 0700, files 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def modes(folder: Path) -> dict[str, str]:
    """Relative path -> octal mode of every folder and file under `folder` (itself included), symlinks left out."""
    found = {".": oct(stat.S_IMODE(folder.stat().st_mode))}
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            path = Path(root) / name
            if not path.is_symlink():
                found[str(path.relative_to(folder))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def loose(folder: Path) -> dict[str, str]:
    """Entries that are not 0700 folders or 0600 files."""
    return {p: mode for p, mode in modes(folder).items() if mode != oct(0o700 if (folder / p).is_dir() else 0o600)}
