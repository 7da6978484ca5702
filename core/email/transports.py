"""Email transports: OutboxTransport (the embedded default: one .eml file per message in a folder) and SmtpTransport (production)."""

from __future__ import annotations

import email.message
import email.utils
import os
import secrets
import smtplib
import ssl
from pathlib import Path
from typing import Protocol

from faceharmony.core import tempfiles
from faceharmony.core.datadir import private_dir
from faceharmony.core.settings import Settings


class EmailTransportError(Exception):
    """The message could not be handed over; it stays queued and is retried."""


class Transport(Protocol):
    def send(self, message: email.message.EmailMessage) -> None: ...


def build_message(*, sender: str, to: str, subject: str, body: str, message_id: str) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = f"<{message_id}@faceharmony>"
    msg.set_content(body)
    return msg


class OutboxTransport:
    """Writes each message atomically as <outbox>/<message id>.eml, readable by the owner only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, message: email.message.EmailMessage) -> None:
        private_dir(self.directory)  # 0700 with its parents, whatever the umask
        name = str(message["Message-ID"]).strip("<>").split("@")[0] or secrets.token_hex(16)
        final = self.directory / f"{name}.eml"
        tmp = tempfiles.temporary_path(self.directory, name)  # swept after a crash (core/tempfiles.py)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(message.as_bytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise EmailTransportError(f"outbox write failed: {exc.strerror}") from exc


class SmtpTransport:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, message: email.message.EmailMessage) -> None:
        s = self.settings
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_username:
                    smtp.login(s.smtp_username, s.smtp_password)
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise EmailTransportError(f"SMTP delivery failed: {type(exc).__name__}") from exc


def make_transport(settings: Settings) -> Transport:
    if settings.email_transport == "smtp":
        return SmtpTransport(settings)
    return OutboxTransport(settings.outbox_dir)
