"""What every process entry does: settings or a clear exit, logs, a migrated database, a stop on SIGTERM/SIGINT.

Each process package has a `main(argv) -> int` that parses its own arguments and then hands its body to
`run()`:

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        return process.run("faceharmony-trainer", lambda entry: _serve(entry, args))

`run()` loads the settings (a bad FACEHARMONY_* variable exits 2 with `prog: message`, never a traceback),
configures the logs, and installs the SIGTERM/SIGINT handlers before the body starts: the first signal sets
`entry.stopping` and calls what the body registered with `entry.on_stop()` (a worker hands its job back, the
launcher passes the signal on to its children). A body refuses an unmigrated database with
`entry.require_migrated(db)`; `Refused` from anywhere in the body exits with its code and message, and so
does a keyring that cannot start (core/keys: a missing KEK exits 2 with `prog: KEK_MISSING: ...`).

This is the only place in core that touches signals (core never has a `main` or parses arguments).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from faceharmony.core import logs
from faceharmony.core.keys.errors import KeysUnavailable
from faceharmony.core.settings import Settings, SettingsError

if TYPE_CHECKING:
    import peewee as pw

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MIGRATE_HINT = "the database needs migrations: run `faceharmony-admin migrate`"
# A signal handler as signal.signal() takes and returns it (SIG_DFL and SIG_IGN are ints).
Handler = Callable[[int, FrameType | None], Any] | int | None


class Refused(Exception):
    """The process cannot start (or go on): `prog: message` on stderr and exit `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Entry:
    prog: str
    settings: Settings
    stopping: threading.Event = field(default_factory=threading.Event)
    _on_stop: list[Callable[[int], None]] = field(default_factory=list)
    _signum: int | None = None  # the first stop signal received, if any

    def on_stop(self, callback: Callable[[int], None]) -> None:
        """Calls `callback(signum)` on every SIGTERM/SIGINT (after `stopping` is set); it must not block.

        A signal that came before the callback was registered (a worker still importing torch when the launcher
        stops the system) is not lost: the callback is called at once with it.
        """
        self._on_stop.append(callback)
        if self._signum is not None:
            callback(self._signum)

    def require_migrated(self, db: pw.Database, *, apply: bool = False) -> None:
        """Applies the pending migrations when `apply` (FACEHARMONY_AUTO_MIGRATE), then seals the blobs an older
        version left plain (core/blobstore/reseal.py); else refuses to run on pending migrations."""
        from faceharmony.core.db.migrate import migrate, pending

        if apply:
            from faceharmony.core.blobstore.reseal import reseal_legacy_blobs

            migrate(db)
            reseal_legacy_blobs(db, self.settings)
        elif pending(db):
            raise Refused(MIGRATE_HINT)
        from faceharmony.core.keys.factory import check_database
        from faceharmony.core.keys.keyring import keyring

        if keyring._keyring is not None:  # the data keys belong to this database (KekMissing otherwise)
            check_database(keyring.obj, db)

    def signalled(self, signum: int) -> None:
        if self._signum is None:
            self._signum = signum
        self.stopping.set()
        for callback in list(self._on_stop):
            callback(signum)


def load_settings(prog: str) -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise Refused(str(exc)) from exc


def run(prog: str, body: Callable[[Entry], int | None], *, configure_logs: bool = True) -> int:
    """Runs `body(entry)` as the process `prog` and returns its exit status (None is 0)."""
    try:
        settings = load_settings(prog)
        if configure_logs:
            logs.configure(settings.log_level, settings.log_format)
        entry = Entry(prog, settings)
        previous = _install(entry)
        try:
            return body(entry) or 0
        finally:
            _restore(previous)
    except Refused as exc:
        print(f"{prog}: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except KeysUnavailable as exc:  # no usable KEK or key store at start-up (core/keys): one line, no traceback
        print(f"{prog}: {exc.reason}: {exc}", file=sys.stderr, flush=True)
        return 2


def _install(entry: Entry) -> dict[int, Handler]:
    # Signal handlers can be set from the main thread only; a body run from another thread (a test) has none.
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Handler] = {}
    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, lambda s, _frame: entry.signalled(s))
    return previous


def _restore(previous: dict[int, Handler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
