"""A running API server for tests: real gRPC over loopback, on SQLite or PostgreSQL, with a ManualClock and the email outbox readable.

The server runs on its own event loop in a background thread, so tests talk to
it with the ordinary synchronous gRPC client, as any app would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import os
import re
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import grpc

from faceharmony.clients.errors import reason_of
from faceharmony.core.clock import ManualClock
from faceharmony.core.settings import Settings
from faceharmony.server.app import ApiServer, create_server
from faceharmony.v1 import (
    account_pb2,
    account_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    model_pb2_grpc,
    order_pb2_grpc,
    photo_pb2_grpc,
    purchase_pb2,
    purchase_pb2_grpc,
    support_pb2_grpc,
)
from tests.support.stores import app_store_settings, shared_app_store

START = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)


@dataclass
class User:
    account_id: str
    email: str
    name: str
    token: str

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@dataclass
class Harness:
    settings: Settings
    clock: ManualClock
    api: ApiServer
    port: int
    loop: asyncio.AbstractEventLoop
    channel: grpc.Channel
    _seen_emails: set[str] = field(default_factory=set)

    @property
    def accounts(self):
        return account_pb2_grpc.AccountServiceStub(self.channel)

    @property
    def admin(self):
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    @property
    def purchases(self):
        return purchase_pb2_grpc.PurchaseServiceStub(self.channel)

    def app_store_transaction(self, **fields) -> str:
        """A StoreKit 2 signed transaction from the App Store this harness trusts, signed at the clock's time."""
        return shared_app_store().transaction(at=self.clock.now(), **fields)

    def buy(self, user, product_id: str = "credits_10", **fields):
        """A new App Store purchase recorded for `user`: the RecordPurchaseResponse."""
        jws = self.app_store_transaction(productId=product_id, **fields)
        request = purchase_pb2.RecordPurchaseRequest(store=purchase_pb2.STORE_APP_STORE, signed_transaction=jws)
        return self.purchases.RecordPurchase(request, metadata=user.md)

    @property
    def support(self):
        return support_pb2_grpc.SupportServiceStub(self.channel)

    @property
    def photos(self):
        return photo_pb2_grpc.PhotoServiceStub(self.channel)

    @property
    def models(self):
        return model_pb2_grpc.ModelServiceStub(self.channel)

    @property
    def orders(self):
        return order_pb2_grpc.OrderServiceStub(self.channel)

    @property
    def db(self):
        return self.api.app.db

    def email_hmac(self, address: str) -> str:
        """The keyed HMAC the server looks emails up by (the email columns are sealed)."""
        return self.api.app.hasher.email(address.strip().lower())

    def call_in_loop(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def db_call(self, fn, *args):
        """Runs fn on the server's database pool (the models are bound to its database)."""
        return self.call_in_loop(self.api.app.run(fn, *args))

    # --- email -----------------------------------------------------------------------------
    def deliver_emails(self) -> None:
        """Delivers what is due and waits until the queue is empty (the server's own loop may hold some)."""
        from faceharmony.core.db.models import EmailQueue

        deadline = time.monotonic() + 10
        while True:
            self.call_in_loop(self.api.deliver_emails_now())
            if self.db_call(EmailQueue.select().count) == 0:
                return
            assert time.monotonic() < deadline, "emails stuck in the queue"
            time.sleep(0.02)

    def new_emails(self) -> list[email.message.EmailMessage]:
        """Emails that reached the outbox since the last call, oldest first."""
        self.deliver_emails()
        out = []
        outbox = self.settings.outbox_dir
        files = sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns) if outbox.exists() else []
        for path in files:
            if path.name in self._seen_emails:
                continue
            self._seen_emails.add(path.name)
            out.append(email.message_from_bytes(path.read_bytes(), policy=email.policy.default))
        return out

    def last_email_to(self, address: str, subject_has: str = "") -> email.message.EmailMessage:
        matching = [m for m in self.new_emails() if m["To"] == address and subject_has in m["Subject"]]
        assert matching, f"no email to {address}"
        return matching[-1]

    def code_for(self, address: str) -> str:
        self.accounts.RequestSignInCode(account_pb2.RequestSignInCodeRequest(email=address))
        body = self.last_email_to(address, "sign-in code").get_content()
        return re.search(r"code is: (\d{6})", body).group(1)

    # --- people ----------------------------------------------------------------------------
    def staff(self, role: str = "admin", email_addr: str | None = None) -> User:
        from faceharmony.server.logic import accounts

        email_addr = email_addr or f"{role}-{len(self._seen_emails)}-{id(object())}@staff.example.com"
        account = self.db_call(accounts.create_staff, self.api.app, email_addr, f"{role.title()} Person", role)
        reply = self.accounts.SignIn(account_pb2.SignInRequest(email=email_addr, code=self.code_for(email_addr)))
        return User(account.id, email_addr, account.name, reply.session_token)

    def sign_up(self, email_addr: str, name: str = "Ada Lovelace", approver: User | None = None) -> User:
        """Waiting list, approval by staff, sign-in code, first sign-in: a new active user."""
        self.accounts.JoinWaitlist(account_pb2.JoinWaitlistRequest(name=name, email=email_addr, is_16_or_older=True))
        email_addr = email_addr.strip().lower()
        approver = approver or self.staff("support")
        entries = self.admin.ListWaitlist(admin_pb2.ListWaitlistRequest(page_size=200), metadata=approver.md).entries
        entry = next(e for e in entries if e.email == email_addr)
        self.admin.ApproveWaitlistEntry(admin_pb2.ApproveWaitlistEntryRequest(id=entry.id), metadata=approver.md)
        reply = self.accounts.SignIn(account_pb2.SignInRequest(email=email_addr, code=self.code_for(email_addr)))
        return User(reply.account.id, email_addr, name, reply.session_token)

    def stop(self) -> None:
        self.channel.close()
        self.call_in_loop(self.api.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)


def start_harness(data_dir: Path, database_url: str, *, verifier=None, photo_store=None, **overrides) -> Harness:
    """A started server. The per-account bounds on calls in progress are raised (race tests fire bursts of
    dozens of calls from one account, and one test holds 1000 watch streams); tests of the bounds set their own."""
    overrides.setdefault("max_calls_per_account", 64)
    overrides.setdefault("max_watches_per_account", 1000)
    # App Store purchases verified against the tests' own root (tests/support/stores.py), as production is
    # against Apple's; a test of other store settings passes its own.
    if "app_store_bundle_id" not in overrides:
        overrides.update(app_store_settings(shared_app_store(), data_dir.parent / "app-store"))
    settings = Settings(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        database_url=database_url,
        secret_key="test-secret-key-0123456789abcdef",
        **overrides,
    )
    clock = ManualClock(START)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="api-server", daemon=True)
    thread.start()

    async def boot():
        api, port = await create_server(
            settings, clock=clock, verifier=verifier or shared_verifier(), photo_store=photo_store
        )
        await api.start()
        return api, port

    api, port = asyncio.run_coroutine_threadsafe(boot(), loop).result(timeout=60)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return Harness(settings=settings, clock=clock, api=api, port=port, loop=loop, channel=channel)


@cache
def shared_verifier():
    """One local verifier for the whole test run (its models load once); thread-safe."""
    from faceharmony.core.verify.local import LocalVerifier

    return LocalVerifier()


def status_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    """(code, reason) of a call; (OK, "") when it succeeds."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), reason_of(exc)
    return grpc.StatusCode.OK, ""


def trainer_env(h: Harness, **extra: str) -> dict[str, str]:
    """The environment of a `faceharmony-trainer` subprocess working on the harness's database and data folder."""
    s = h.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env.update(
        FACEHARMONY_DATA_DIR=str(s.data_dir),
        FACEHARMONY_DATABASE_URL=s.database_url,
        FACEHARMONY_SECRET_KEY=s.secret_key,
        FACEHARMONY_BASE_MODEL=str(s.base_model),
        FACEHARMONY_TRAINING_LEASE_SECONDS=str(s.training_lease_seconds),
        FACEHARMONY_TRAINER_POLL_SECONDS=str(s.trainer_poll_seconds),
        FACEHARMONY_TRAINING_STEPS=str(s.training_steps),
        FACEHARMONY_LOG_FORMAT="text",
        **extra,
    )
    return env
