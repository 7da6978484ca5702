"""Signing people up on a system running on its embedded defaults (`make up`), for the demo and the load tester.

On the embedded defaults the server's mail goes to `<data dir>/outbox/*.eml` instead of an inbox, and a
waiting-list entry is approved by staff. This module plays both parts for a script: it makes a staff account
with the operator's own command (`faceharmony-admin create-staff`, which works on the server's database
under the same settings), signs that account in over gRPC, approves a waiting-list entry through
`AdminService`, and reads each emailed sign-in code out of the outbox. Everything a user does goes through
the public API (`faceharmony.clients.sdk`); nothing here touches the server's code or database.

It needs the system's data folder (`FACEHARMONY_DATA_DIR` like the server's, or `outbox=<data dir>/outbox`):
the operator command runs on that folder's database, and the codes arrive in its outbox (made by the server
with its first mail, so it may not be there yet). It refuses a folder that does not hold the server's database
(the embedded SQLite file, unless FACEHARMONY_DATABASE_URL names another), before anything is sent, so a wrong
folder leaves nothing behind on the server or in the folder. The staff account is made and signed in before any
person joins the waiting list, for the same reason.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from faceharmony.clients.sdk import Client
from faceharmony.v1 import admin_pb2

CODE = re.compile(r"code is: (\d{6})")
# The embedded database's file in a data folder (core/settings.py's default database_url).
SQLITE_FILE = "faceharmony.sqlite3"


class EmbeddedError(RuntimeError):
    """The embedded system cannot be driven (no outbox, the operator command failed, no mail arrived)."""


class _NoMailYet(Exception):
    pass


def default_outbox() -> Path:
    return Path(os.environ.get("FACEHARMONY_DATA_DIR", "data")) / "outbox"


def admin_command() -> list[str]:
    """`faceharmony-admin`, from the same environment as this interpreter when it is there."""
    beside = Path(sys.executable).with_name("faceharmony-admin")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("faceharmony-admin")
    if found is None:
        raise EmbeddedError("faceharmony-admin not found: run from the project's environment (.venv/bin)")
    return [found]


@dataclass
class EmbeddedSystem:
    """A local system's operator side: staff approval and the outbox."""

    target: str = "127.0.0.1:50051"
    outbox: Path = field(default_factory=default_outbox)
    mail_timeout: float = 30.0
    _staff: Client | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.data_dir.is_dir():
            raise EmbeddedError(
                f"no data folder at {self.data_dir}: FACEHARMONY_DATA_DIR (or outbox=) must name the server's"
            )
        if not os.environ.get("FACEHARMONY_DATABASE_URL") and not (self.data_dir / SQLITE_FILE).is_file():
            raise EmbeddedError(
                f"{self.data_dir} is not the server's data folder (no {SQLITE_FILE} in it): set FACEHARMONY_DATA_DIR"
                " (or --data-dir) to the folder the server runs on"
            )

    @property
    def data_dir(self) -> Path:
        return self.outbox.parent

    def client(self, token: str | None = None) -> Client:
        return Client(self.target, token=token)

    def code_for(self, address: str, *, client: Client) -> str:
        """Asks for a sign-in code for the address and reads it from the outbox."""
        since = time.time_ns()
        client.accounts.request_sign_in_code(address)
        found = CODE.search(self._wait_for_mail(address, "sign-in code", since))
        if found is None:
            raise EmbeddedError("the sign-in email holds no code: its template changed?")
        return found.group(1)

    def _wait_for_mail(self, address: str, subject_has: str, since_ns: int) -> str:
        def newest() -> str:
            if not self.outbox.is_dir():
                raise _NoMailYet
            for path in sorted(self.outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns, reverse=True):
                if path.stat().st_mtime_ns < since_ns:
                    break
                message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                if message["To"] == address and subject_has in message["Subject"]:
                    body = message.get_body(preferencelist=("plain",))
                    return body.get_content() if body is not None else ""
            raise _NoMailYet

        # The server's mail worker delivers on its own tick: poll the folder until the message is there.
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(_NoMailYet),
                stop=stop_after_delay(self.mail_timeout),
                wait=wait_fixed(0.2),
                reraise=True,
            ):
                with attempt:
                    return newest()
        except _NoMailYet:
            pass
        raise EmbeddedError(
            f"no '{subject_has}' email reached {self.outbox} within {self.mail_timeout:.0f} s: is the system on"
            " its embedded mail defaults (FACEHARMONY_EMAIL_TRANSPORT=outbox), with this data folder?"
        )

    def staff(self, address: str = "demo-staff@faceharmony.example", name: str = "Demo Staff") -> Client:
        """A signed-in support account (made, or given the role, with faceharmony-admin)."""
        if self._staff is None:
            result = subprocess.run(
                [*admin_command(), "create-staff", address, name, "--role", "support"],
                capture_output=True,
                text=True,
                check=False,
                # The operator command works on the database of the data folder whose outbox is read here.
                env={**os.environ, "FACEHARMONY_DATA_DIR": str(self.data_dir)},
            )
            if result.returncode != 0:
                raise EmbeddedError(f"faceharmony-admin create-staff failed: {result.stderr.strip()[-300:]}")
            staff = self.client()
            staff.accounts.sign_in(address, self.code_for(address, client=staff))
            self._staff = staff
        return self._staff

    def sign_up(self, address: str, name: str, *, note: str = "") -> Client:
        """A new active user, signed in: waiting list, approval by staff, the emailed code, first sign-in.

        An address that already has an account simply signs in."""
        address = address.strip().lower()
        staff = self.staff()  # first: a folder or system that cannot approve leaves no entry behind
        user = self.client()
        user.accounts.join_waitlist(name, address, is_16_or_older=True, note=note)
        pending = staff.admin.list_waitlist(state=admin_pb2.WAITLIST_ENTRY_STATE_PENDING)
        for entry in pending:
            if entry.email == address:
                staff.admin.approve_waitlist_entry(entry.id)
        user.accounts.sign_in(address, self.code_for(address, client=user))
        return user

    def close(self) -> None:
        if self._staff is not None:
            self._staff.close()
            self._staff = None

    def __enter__(self) -> EmbeddedSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sign_up_users(system: EmbeddedSystem, addresses: Sequence[tuple[str, str]]) -> list[Client]:
    """Signs up each (address, name) in turn: a signed-in Client each."""
    return [system.sign_up(address, name) for address, name in addresses]
