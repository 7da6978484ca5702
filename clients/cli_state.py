"""What one `faceharmony` invocation carries: the server address, the session file, the SDK client and the output.

The session token lives in FACEHARMONY_CLIENT_SESSION_FILE (default ~/.config/faceharmony/session): the file is
written 0600 in a folder made 0700, replaced whole (never left half-written), and removed on sign-out. A file
that holds anything but one printable-ASCII token (not UTF-8, a newline inside, unreadable) counts as signed
out: no token is sent, a call that needs one ends with exit 3 and "the session file is unreadable", and
sign-out removes it. The token is never sent in plaintext to a host that is not loopback unless --insecure is
given (--tls, or FACEHARMONY_CLIENT_TLS, makes the channel TLS). The SDK client is made on first use, so
commands that talk to no server (completion, --help) open no channel.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import typer

from faceharmony.clients.cli_output import ExitCode, Failure, Output
from faceharmony.clients.sdk import Client

# A session token as the server makes them: printable ASCII, no spaces (it goes into a gRPC header).
TOKEN = re.compile(rb"[\x21-\x7e]+")
# host:port, the host a name, an IPv4 address or an [IPv6] address.
LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
TARGET = re.compile(rf"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>{LABEL}(?:\.{LABEL})*)):(?P<port>\d{{1,5}})")


class SessionUnreadable(Exception):
    """The session file exists but holds no usable token."""


@dataclass(frozen=True)
class SessionFile:
    """The file that keeps the session token between runs, readable by its owner only."""

    path: Path

    @classmethod
    def from_env(cls) -> SessionFile:
        default = Path.home() / ".config" / "faceharmony" / "session"
        return cls(Path(os.environ.get("FACEHARMONY_CLIENT_SESSION_FILE") or default))

    def load(self) -> str | None:
        """The token; None when there is no file (or an empty one); SessionUnreadable when it holds no token."""
        try:
            data = self.path.read_bytes().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder, no permission
            raise SessionUnreadable(exc.strerror) from exc
        if not data:
            return None
        if not TOKEN.fullmatch(data):
            raise SessionUnreadable("not a session token")
        return data.decode("ascii")

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


def check_target(target: str) -> str:
    """The --server value if it is host:port (else a usage Failure, before gRPC sees it)."""
    found = TARGET.fullmatch(target)
    valid = found is not None and 1 <= int(found["port"]) <= 65535
    if found is not None and found["ip6"]:
        try:
            ipaddress.IPv6Address(found["ip6"])
        except ValueError:
            valid = False
    if not valid:
        raise Failure(
            ExitCode.USAGE,
            "INVALID_SERVER",
            f"--server (FACEHARMONY_CLIENT_SERVER) must be HOST:PORT, e.g. 127.0.0.1:50051, not {target!r}",
        )
    return target


def is_loopback(target: str) -> bool:
    """Whether host:port names this machine (localhost, 127.0.0.0/8, [::1])."""
    found = TARGET.fullmatch(target)
    if found is None:
        return False
    host = found["ip6"] or found["host"]
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class State:
    """The invocation's settings (from the global options) and its lazily made SDK client."""

    server: str
    out: Output
    session: SessionFile
    tls: bool = False
    insecure: bool = False
    # Set once a load found a session file that holds no token (the error then says so).
    session_unreadable: bool = False
    _client: Client | None = field(default=None, repr=False)

    def token(self) -> str | None:
        try:
            return self.session.load()
        except SessionUnreadable:
            self.session_unreadable = True
            return None

    @property
    def signed_in(self) -> bool:
        return self.token() is not None

    def require_private(self) -> None:
        """Refuses (usage, exit 2) to send credentials in plaintext to a host that is not loopback."""
        if self.tls or self.insecure or is_loopback(self.server):
            return
        raise Failure(
            ExitCode.USAGE,
            "PLAINTEXT_REFUSED",
            f"refusing to send a session or sign-in code in plaintext to {self.server}: give --tls "
            "(or FACEHARMONY_CLIENT_TLS=1), or --insecure to send it anyway",
        )

    @property
    def client(self) -> Client:
        if self._client is None:
            token = self.token()
            if token is not None:
                self.require_private()
            self._client = Client(self.server, token=token, tls=self.tls)
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
