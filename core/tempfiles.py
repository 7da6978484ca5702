"""Temporary files that hold personal data: where they are made, how they are named, and the sweep of those a crash left behind.

Every temporary file or folder that holds personal data lives inside the data
folder or the blob store, as a 0600 file or a 0700 folder whose name starts
with ``TEMP_PREFIX`` (a dot-name, so no listing of blobs or emails shows it):

- a blob being written: ``<blob root>/<kind>/.tmp-<blob id>-<random>``, linked
  into place, then removed (``core/blobstore/local.py``);
- an email being written to the outbox: ``<data dir>/outbox/.tmp-<message
  id>-<random>``, renamed into place (``core/email/transports.py``);
- anything a process must put on disk for a moment, such as the trainer's
  adapter (diffusers writes LoRA weights only into a folder): a folder made by
  ``scratch_folder`` in ``<data dir>/tmp``.

Nothing with personal data goes to the system's temporary folder, where a
``kill -9`` would leave it for good. A process killed between making such an
entry and removing it leaves it behind (after the blob store's link, as a
second name of the stored blob's file, so deleting the blob would free
nothing); the retention daemon's orphan sweep (``retention/orphans.py``)
deletes every entry last modified before the orphan margin, by real time, so
a write still in progress is left alone. The trainer also sweeps its own
scratch folder when it starts (a trainer may run where no daemon sweeps).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

from faceharmony.core.datadir import private_dir

TEMP_PREFIX = ".tmp-"
SCRATCH_FOLDER = "tmp"


def temporary_path(folder: Path, name: str) -> Path:
    """A new, unused name for a temporary file in `folder` (the caller creates it 0600 with O_EXCL)."""
    return folder / f"{TEMP_PREFIX}{name}-{secrets.token_hex(8)}"


def scratch_dir(data_dir: Path) -> Path:
    """``<data dir>/tmp``, made 0700 (with any missing parent) when missing, whatever the umask."""
    return private_dir(Path(data_dir) / SCRATCH_FOLDER)


def scratch_folder(data_dir: Path, purpose: str) -> tempfile.TemporaryDirectory[str]:
    """A 0700 temporary folder inside ``<data dir>/tmp``, removed when the context exits (or by the sweep after a crash)."""
    return tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{purpose}-", dir=scratch_dir(data_dir))


def _last_modified(path: Path, st: os.stat_result) -> float:
    """The newest modification time of an entry: of a folder, over everything inside it."""
    newest = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except FileNotFoundError:
                    pass
    return newest


def sweep_stale(folder: Path, cutoff: dt.datetime, dry_run: bool = False) -> int:
    """Deletes the temporary entries (``TEMP_PREFIX`` names: files, links, folders with what they hold) directly in
    `folder` last modified before `cutoff` (a real time); returns how many (dry_run: only counts them)."""
    limit = cutoff.timestamp()
    count = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
            if _last_modified(path, st) >= limit:
                continue
            if not dry_run:
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(path)
                else:
                    path.unlink()
        except FileNotFoundError:  # removed meanwhile (its writer finished, or another sweep)
            continue
        count += 1
    return count
