"""The data folder's permissions: whatever the system writes under FACEHARMONY_DATA_DIR is its owner's alone.

Folders are 0700 and files 0600, whatever the umask (os.mkdir's and open's modes are masked by the umask,
and libraries such as diffusers and SQLite create files with their own modes):

* `private_dir(path)`: `path` and its missing parents made as 0700 folders (each new one chmod-ed, so a
  umask of 0 or 0o077 changes nothing); an existing folder is left as it is.
* `private_file(path)`: an empty 0600 file made when missing, one with group or other bits tightened to
  0600: for files another library then opens (SQLite gives its -wal and -shm files the database file's
  mode).
* `tighten(path)`: an existing file or folder with group or other bits made 0600 or 0700 (a missing one
  is left missing).
* `make_private(path)`: a tree tightened, folders 0700 and files 0600, for what a library wrote with its
  own modes (the base pipeline's `save_pretrained`). Symlinks are left alone (Triton's backend folder
  links into site-packages; chmod would follow them).
* `prepare_data_dir(data_dir)`: run at start by `faceharmony-up` and the API server: the
  data folder made 0700; one found with group or other bits (made by an older version, or by hand) is
  tightened with everything in it, and a warning says how many entries changed. A folder already 0700 is
  not walked (a start stays cheap however many blobs it holds). A folder this user cannot chmod stops
  the process (`DataDirError`).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("faceharmony.datadir")

DIR_MODE = 0o700
FILE_MODE = 0o600
_LOOSE = 0o077  # any group or other permission bit


class DataDirError(RuntimeError):
    """The data folder (or a path in it) cannot be made private."""


def private_dir(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        return path
    missing = []
    for p in (path, *path.parents):
        if p.is_dir():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            os.mkdir(p, DIR_MODE)
        except FileExistsError:
            if not p.is_dir():
                raise
            continue  # made by a concurrent process: it makes it private itself
        os.chmod(p, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        tighten(path)
        return path
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def tighten(path: Path) -> bool:
    """True when an existing entry had to be tightened."""
    try:
        return _tighten(Path(path), os.lstat(path))
    except FileNotFoundError:
        return False


def _tighten(path: Path, st: os.stat_result) -> bool:
    if stat.S_ISLNK(st.st_mode):
        return False
    mode = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
    if stat.S_IMODE(st.st_mode) == mode:
        return False
    os.chmod(path, mode)
    return True


def make_private(path: Path) -> int:
    """Folders 0700, files 0600 under `path` (itself included); returns how many entries changed."""
    path = Path(path)
    changed = int(_tighten(path, path.lstat()))
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            entry = Path(root) / name
            try:
                changed += _tighten(entry, entry.lstat())
            except FileNotFoundError:  # removed meanwhile (a temporary file, a purged blob)
                pass
    return changed


def prepare_data_dir(data_dir: Path) -> Path:
    """The data folder, made (or made again) private; see the module docstring."""
    data_dir = Path(data_dir)
    try:
        private_dir(data_dir)
        if stat.S_IMODE(data_dir.stat().st_mode) & _LOOSE:
            changed = make_private(data_dir)
            log.warning("data folder permissions tightened", extra={"entries": changed})
    except OSError as exc:
        raise DataDirError(f"the data folder {data_dir} cannot be made private: {exc.strerror}") from exc
    return data_dir
