"""`faceharmony-up`: starts the whole system on its embedded defaults and supervises it.

Today the system is the API server; the trainer, order worker, Triton and the
retention daemon join this list as their issues land. Each process runs as a
child with the same environment; SIGTERM/SIGINT are passed on, and when one
child exits the others are stopped, so a broken part is never hidden.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PROCESSES: list[tuple[str, list[str]]] = [
    ("server", [sys.executable, "-m", "faceharmony.server"]),
]


def main() -> None:
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop(signum=None, frame=None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for name, argv in PROCESSES:
        children[name] = subprocess.Popen(argv, env=os.environ.copy())
        print(f"faceharmony-up: started {name} (pid {children[name].pid})", file=sys.stderr, flush=True)
    exit_code = 0
    while children:
        for name, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[name]
            if not stopping:
                print(f"faceharmony-up: {name} exited with {code}; stopping the rest", file=sys.stderr, flush=True)
                exit_code = code or 1
                stop()
        time.sleep(0.2)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
