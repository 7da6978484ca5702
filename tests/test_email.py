"""Transactional email: templates greet by name (P4), the outbox transport writes private files, SMTP delivers to a real (local) SMTP server, failures are retried and nothing personal stays queued."""

from __future__ import annotations

import email
import email.policy
import socket
import stat
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message

from faceharmony.core.clock import ManualClock
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import open_database
from faceharmony.core.db.migrate import migrate
from faceharmony.core.email import queue, templates
from faceharmony.core.email.transports import EmailTransportError, OutboxTransport, SmtpTransport
from faceharmony.core.keys.keyring import keyring
from faceharmony.core.settings import Settings
from faceharmony.v1 import account_pb2 as a
from tests.support.harness import start_harness
from tests.support.wait import wait_for


class Capture(Message):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[email.message.EmailMessage] = []

    def handle_message(self, message) -> None:
        self.messages.append(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    handler = Capture()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, handler
    controller.stop()


@pytest.mark.parametrize("kind", templates.KINDS)
def test_every_template_greets_by_name(kind):
    params = {
        "sign_in_code": {"code": "123456", "minutes": "10"},
        "invitation": {"inviter_name": "Ivy", "token": "tok", "expires": "2026-02-01"},
        "deletion_scheduled": {"purge_after": "2026-02-14"},
    }.get(kind, {})
    rendered = templates.render(kind, name="Zoë Quinn", **params)
    assert rendered.body.startswith("Hi Zoë Quinn,")
    assert rendered.subject and "\n" not in rendered.subject
    if params:  # a missing placeholder fails loudly instead of sending "$code"
        with pytest.raises(KeyError):
            templates.render(kind, name="x", **dict(list(params.items())[:-1]))


def test_unknown_template_kind_fails():
    with pytest.raises(KeyError):
        templates.render("nope", name="x")


def test_outbox_files_are_private_and_atomic(tmp_path):
    transport = OutboxTransport(tmp_path / "outbox")
    from faceharmony.core.email.transports import build_message

    transport.send(build_message(sender="a@b.example", to="c@d.example", subject="s", body="b", message_id="abc"))
    files = list((tmp_path / "outbox").iterdir())
    assert [f.name for f in files] == ["abc.eml"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_server_sends_sign_in_codes_over_smtp(tmp_path, smtp_server):
    controller, handler = smtp_server
    h = start_harness(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        email_transport="smtp",
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
    )
    try:
        from faceharmony.server.logic import accounts

        h.db_call(accounts.create_staff, h.api.app, "smtp-staff@example.com", "Sam Smtp", "support")
        h.accounts.RequestSignInCode(a.RequestSignInCodeRequest(email="smtp-staff@example.com"))
        deadline = time.monotonic() + 10
        while not handler.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(handler.messages) == 1
        msg = handler.messages[0]
        assert msg["To"] == "smtp-staff@example.com"
        body = msg.get_payload(decode=True).decode()
        assert body.startswith("Hi Sam Smtp,")
        # Nothing personal stays queued: the row goes once the SMTP server has accepted the message (just after
        # the server above has it).
        wait_for(lambda: h.db_call(m.EmailQueue.select().count) == 0, 30, "the sent e-mail to leave the queue")
        assert not (tmp_path / "data" / "outbox").exists()
    finally:
        h.stop()


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list = []

    def send(self, message) -> None:
        if self.failures:
            self.failures -= 1
            raise EmailTransportError("down")
        self.sent.append(message)


def test_failed_sends_are_retried_with_backoff_then_given_up(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    migrate(db)
    clock = ManualClock()
    with db.atomic():
        queue.enqueue(clock=clock, kind="reactivated", to="r@example.com", name="R", key_id=keyring.new_key())
    flaky = Flaky(failures=2)
    assert queue.deliver_due(db, flaky, clock, "from@example.com") == 0
    assert queue.deliver_due(db, flaky, clock, "from@example.com") == 0  # backing off: not due yet
    clock.advance(seconds=11)
    assert queue.deliver_due(db, flaky, clock, "from@example.com") == 0  # second failure
    clock.advance(seconds=21)
    assert queue.deliver_due(db, flaky, clock, "from@example.com") == 1
    assert len(flaky.sent) == 1 and m.EmailQueue.select().count() == 0

    with db.atomic():
        queue.enqueue(clock=clock, kind="reactivated", to="never@example.com", name="N", key_id=keyring.new_key())
    dead = Flaky(failures=10**6)
    for _ in range(queue.MAX_ATTEMPTS):
        queue.deliver_due(db, dead, clock, "from@example.com")
        clock.advance(hours=2)
    assert m.EmailQueue.select().count() == 0  # given up: not kept forever
    db.close()


def test_unreachable_smtp_is_a_transport_error(tmp_path):
    transport = SmtpTransport(Settings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_timeout_seconds=2))
    from faceharmony.core.email.transports import build_message

    with pytest.raises(EmailTransportError):
        transport.send(build_message(sender="a@b.example", to="c@d.example", subject="s", body="b", message_id="x"))


def test_two_deliverers_never_send_the_same_email_twice(tmp_path):
    import threading

    db = open_database(f"sqlite:///{tmp_path / 'q2.sqlite3'}")
    migrate(db)
    clock = ManualClock()
    with db.atomic():
        for i in range(40):
            queue.enqueue(clock=clock, kind="reactivated", to=f"u{i}@example.com", name="U", key_id=keyring.new_key())
    sink = Flaky(failures=0)

    def worker():
        db.connect(reuse_if_open=True)
        while queue.deliver_due(db, sink, clock, "f@example.com", limit=3):
            pass
        db.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(msg["To"] for msg in sink.sent) == sorted(f"u{i}@example.com" for i in range(40))


def test_an_email_that_no_longer_opens_is_dropped_and_does_not_hold_back_the_others(tmp_path):
    """Its person was purged (the key shredded) while it waited: it can never be sent, so it goes, logged by id,
    and the email after it is still sent."""
    db = open_database(f"sqlite:///{tmp_path / 'q3.sqlite3'}")
    migrate(db)
    clock = ManualClock()
    gone = keyring.new_key()
    with db.atomic():
        queue.enqueue(clock=clock, kind="reactivated", to="gone@example.com", name="G", key_id=gone)
        clock.advance(seconds=1)
        queue.enqueue(clock=clock, kind="reactivated", to="here@example.com", name="H", key_id=keyring.new_key())
    keyring.shred(gone)
    sink = Flaky(failures=0)
    assert queue.deliver_due(db, sink, clock, "from@example.com") == 1
    assert [msg["To"] for msg in sink.sent] == ["here@example.com"]
    assert m.EmailQueue.select().count() == 0
    db.close()
