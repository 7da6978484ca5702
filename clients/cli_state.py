"""What one `faceharmony` invocation carries: the server address, the session file, the SDK client and the output.

The session token lives in FACEHARMONY_CLIENT_SESSION_FILE (default ~/.config/faceharmony/session): the file is
written 0600 in a folder made 0700, replaced whole (never left half-written), and removed on sign-out. The
SDK client is made on first use, so commands that talk to no server (completion, --help) open no channel.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import typer

from faceharmony.clients.cli_output import Output
from faceharmony.clients.sdk import Client


@dataclass(frozen=True)
class SessionFile:
    """The file that keeps the session token between runs, readable by its owner only."""

    path: Path

    @classmethod
    def from_env(cls) -> SessionFile:
        default = Path.home() / ".config" / "faceharmony" / "session"
        return cls(Path(os.environ.get("FACEHARMONY_CLIENT_SESSION_FILE") or default))

    def load(self) -> str | None:
        try:
            token = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        return token or None

    def save(self, token: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".session-")  # mkstemp makes it 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(token)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class State:
    """The invocation's settings (from the global options) and its lazily made SDK client."""

    server: str
    out: Output
    session: SessionFile
    _client: Client | None = field(default=None, repr=False)

    @property
    def signed_in(self) -> bool:
        return self.session.load() is not None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.server, token=self.session.load())
        return self._client

    def close(self) -> None:
        """Closes the channel, which ends any call in progress on it (CANCELLED); a later call makes a new one."""
        if self._client is not None:
            self._client.close()
            self._client = None


def state(ctx: typer.Context) -> State:
    """The State the global callback put on the context."""
    found = ctx.find_object(State)
    assert found is not None, "the faceharmony callback sets the state"
    return found
