"""The heartbeat file of a long-running worker (trainer, order worker, retention daemon) and the check of it.

`Heartbeat(settings, prog).start(state)` rewrites `<data dir>/run/<prog>.heartbeat` every
FACEHARMONY_HEARTBEAT_INTERVAL_SECONDS from a thread of its own, so a long training job or a long retention sleep
keeps it fresh; `state()` returns `(ready, detail)` (the order worker: whether Triton answered its last check).
The file is 0600 in a 0700 folder, replaced atomically (a reader never sees half of it), and holds only
`{"time": <unix seconds>, "pid": N, "ready": bool, "detail": "..."}` — no personal data. `stop()` ends the
thread and removes the file; a process that is killed leaves a file that goes stale.

`check(settings, prog, ready=False)` is what `--healthcheck` runs: `(ok, line)`, ok when the file is younger
than FACEHARMONY_HEARTBEAT_MAX_AGE_SECONDS (and, with `ready`, says ready). It needs no database.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from faceharmony.core.datadir import private_dir
from faceharmony.core.settings import Settings

log = logging.getLogger("faceharmony.heartbeat")

State = Callable[[], tuple[bool, str]]


def path_for(settings: Settings, prog: str) -> Path:
    return settings.data_dir / "run" / f"{prog}.heartbeat"


class Heartbeat:
    def __init__(self, settings: Settings, prog: str) -> None:
        self.path = path_for(settings, prog)
        self.interval = settings.heartbeat_interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: State = lambda: (True, "")

    def beat(self) -> None:
        ready, detail = self._state()
        body = json.dumps({"time": time.time(), "pid": os.getpid(), "ready": bool(ready), "detail": detail[:200]})
        private_dir(self.path.parent)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:  # mkstemp makes it 0600
                fh.write(body)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def start(self, state: State | None = None) -> Heartbeat:
        if state is not None:
            self._state = state
        self.beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat-file", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a full disk: the file goes stale, which is what the check reports
                log.warning("heartbeat file not written", extra={"path": str(self.path)})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.path.unlink(missing_ok=True)


def check(settings: Settings, prog: str, *, ready: bool = False) -> tuple[bool, str]:
    path = path_for(settings, prog)
    max_age = settings.heartbeat_max_age_seconds
    try:
        data = json.loads(path.read_text())
        age = time.time() - float(data["time"])
    except FileNotFoundError:
        return False, f"{prog}: unhealthy: no heartbeat file {path}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"{prog}: unhealthy: heartbeat file {path} unreadable ({type(exc).__name__})"
    if age > max_age:
        return False, f"{prog}: unhealthy: heartbeat {age:.0f} s old (max {max_age:g} s)"
    if ready and not data.get("ready"):
        return False, f"{prog}: not ready: {data.get('detail') or 'not ready'}"
    detail = f" ({data['detail']})" if data.get("detail") else ""
    return True, f"{prog}: {'ready' if ready else 'healthy'}: heartbeat {age:.0f} s old{detail}"


def healthcheck(prog: str, *, ready: bool = False) -> int:
    """`prog --healthcheck [--ready]`: one line on stdout, exit 0 healthy or 1."""
    from faceharmony.core.settings import SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"{prog}: unhealthy: {exc}", flush=True)
        return 1
    ok, line = check(settings, prog, ready=ready)
    print(line, flush=True)
    return 0 if ok else 1
