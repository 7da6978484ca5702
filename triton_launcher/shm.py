"""The Python backend's shared-memory regions: named per launch, held by a lock while the server lives, swept once it is gone.

Triton's Python backend passes every request and response (prompts, adapter
ids, generated images, which the model seals first: IMAGE_SEALED) between the
server and its stub processes through POSIX shared-memory regions
(``/dev/shm/<prefix><uuid>``, 1 MB and up). A clean shutdown unlinks them; a
SIGKILLed server leaves them, with the last requests and sealed images in
them, until the machine reboots. They cannot live in the data
folder (``shm_open`` names live in ``/dev/shm``), so each launch gets its own
name prefix and a lock file in the data folder that says whether it is over:

* ``ShmLease(lock_dir)``: a random token, and ``<lock_dir>/<token>.lock``
  (0600) locked with ``flock``. The launcher hands the locked descriptor to
  ``tritonserver`` (``pass_fds``) and closes its own copy, so the lock is held
  exactly as long as the server or one of its stubs (which inherit it) runs.
  ``backend_arg`` is the ``--backend-config`` that names the regions
  ``faceharmony_triton_<token>_<uuid>``.
* ``sweep_regions(lock_dir)``: for every lock file whose lock can be taken
  (no process of that launch is left), unlinks its regions and the lock file.
  The launcher runs it before each start and after its server stopped.

The lock file is made under a temporary name and renamed into place once
locked, so a sweep never mistakes a starting launch for a finished one.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path

from faceharmony.core.datadir import private_dir

SHM_DIR = Path("/dev/shm")
REGION_PREFIX = "faceharmony_triton_"


class ShmLease:
    """One launch's region prefix and its lock; `fd` goes to the server with `pass_fds`, then `handed_over()`."""

    def __init__(self, lock_dir: Path) -> None:
        lock_dir = private_dir(Path(lock_dir))
        self.token = secrets.token_hex(8)
        self.lock_path = lock_dir / f"{self.token}.lock"
        starting = lock_dir / f".{self.token}.starting"
        self.fd = os.open(starting, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            os.replace(starting, self.lock_path)
        except BaseException:
            os.close(self.fd)
            starting.unlink(missing_ok=True)
            raise

    @property
    def prefix(self) -> str:
        return f"{REGION_PREFIX}{self.token}_"

    @property
    def backend_arg(self) -> str:
        return f"--backend-config=python,shm-region-prefix-name={self.prefix}"

    def handed_over(self) -> None:
        """Closes this process's copy of the locked descriptor (the server's copy keeps the lock)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def sweep_regions(lock_dir: Path, shm_dir: Path = SHM_DIR) -> int:
    """Unlinks the regions of every finished launch under `lock_dir` (its lock is free) and its lock file; returns
    how many regions went. A launch whose server or stubs still run is left alone."""
    lock_dir = Path(lock_dir)
    if not lock_dir.is_dir():
        return 0
    removed = 0
    for lock in sorted(lock_dir.glob("*.lock")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:  # swept meanwhile by another launcher
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # that server (or one of its stubs) is still running
            for region in shm_dir.glob(f"{REGION_PREFIX}{lock.stem}_*"):
                try:
                    region.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return removed
