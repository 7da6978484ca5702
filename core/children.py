"""Child processes that do not outlive the process that started them.

`die_with_parent(signum)` is a `preexec_fn` for `subprocess.Popen`: the child
asks the Linux kernel (prctl PR_SET_PDEATHSIG) to send it `signum` when its
parent dies, however the parent dies (SIGKILL included). Without it a
supervisor killed with SIGKILL leaves its children running: they keep their
ports, so the next start cannot bind them, and a child the supervisor no longer
knows goes on holding personal data in memory. If the parent is already gone
when the child runs this (the race between fork and prctl), the child exits at
once.

prctl is reached through ctypes because no well-kept, dependency-free library
wraps it (python-prctl needs libcap's headers to build); the libc function is
looked up before the fork, so the child only makes the one system call.
Elsewhere than Linux the child is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_prctl = None
if sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _prctl = _libc.prctl


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that ties the child to this process's life (None where the kernel cannot)."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec
