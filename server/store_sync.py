"""What the stores tell the server without being asked by a client (core/stores, server/logic/purchases.py).

* `AppStoreNotifications`: the App Store Server Notifications V2 endpoint, an HTTP listener (aiohttp) on
  FACEHARMONY_APP_STORE_NOTIFICATIONS_LISTEN, loopback unless that says otherwise; Apple requires HTTPS, so a
  TLS-terminating proxy or ingress forwards `POST /app-store/notifications/v2` to it. Each body's
  signedPayload is verified as transactions are (the chain to the trusted roots, bundle id, Apple id,
  environment); REFUND and REVOKE take the purchase's credits back, REFUND_REVERSED gives them back. Answers:
  200 applied, already applied or of no concern; 400 not verified (nothing changed); 503 or 500, nothing
  changed, so that Apple retries.
* `PlayVoidedPoller`: every FACEHARMONY_PLAY_VOIDED_POLL_SECONDS, Play's voided purchases since the last poll
  (the last 30 days after a start), each applied once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

from aiohttp import web

from faceharmony.core.stores import ReceiptInvalid, StoreUnavailable
from faceharmony.server.context import AppContext
from faceharmony.server.logic.purchases import apply_revocation

log = logging.getLogger(__name__)

NOTIFICATIONS_PATH = "/app-store/notifications/v2"
MAX_BODY_BYTES = 64 * 1024  # a notification with its transaction and their certificates is about 10 KB
VOIDED_WINDOW = dt.timedelta(days=29)  # the Voided Purchases API looks back at most 30 days: a margin for clocks
VERIFYING_AT_ONCE = 4  # notifications verified at a time (anyone can POST; a chain check costs milliseconds of CPU)
WAITING_AT_MOST = 64  # more than these waiting to be verified: 503 at once (Apple retries), not a growing queue
VOIDED_OVERLAP = dt.timedelta(hours=1)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class AppStoreNotifications:
    def __init__(self, app: AppContext, listen: str) -> None:
        self.app = app
        self.listen = listen
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._verifying = asyncio.Semaphore(VERIFYING_AT_ONCE)
        self._waiting = 0  # requests holding or waiting for `_verifying`

    async def start(self) -> None:
        application = web.Application(client_max_size=MAX_BODY_BYTES)
        application.router.add_post(NOTIFICATIONS_PATH, self._handle)
        self._runner = web.AppRunner(application, access_log=None)  # no access log: it would name client addresses
        await self._runner.setup()
        host, port = split_address(self.listen)
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]
        log.info("App Store notifications listening", extra={"port": self.port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = json.loads((await request.read()).decode("utf-8"))
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "a JSON body of at most 64 KiB is expected"}, status=413)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested past the parser's depth
            return web.json_response({"error": "a JSON body of at most 64 KiB is expected"}, status=400)
        signed = body.get("signedPayload") if isinstance(body, dict) else None
        if not isinstance(signed, str) or not signed:
            return web.json_response({"error": "signedPayload is required"}, status=400)
        app_store = self.app.stores.app_store
        assert app_store is not None
        if self._waiting >= WAITING_AT_MOST:
            return web.json_response({"error": "try again"}, status=503)
        self._waiting += 1
        try:
            async with self._verifying:
                uuid, revocation = await self.app.run(app_store.verify_notification, signed, self.app.clock.now())
        except ReceiptInvalid as exc:
            log.warning("App Store notification refused", extra={"detail": exc.detail})
            return web.json_response({"error": "not verified"}, status=400)
        except StoreUnavailable:
            return web.json_response({"error": "try again"}, status=503)
        finally:
            self._waiting -= 1
        outcome = "ignored"
        if revocation is not None:
            try:
                outcome = await self.app.run(apply_revocation, self.app, revocation)
            except Exception:
                log.exception("App Store notification not applied")
                return web.json_response({"error": "try again"}, status=500)
        log.info("App Store notification", extra={"notification_uuid": uuid, "outcome": outcome})
        return web.json_response({"outcome": outcome})


class PlayVoidedPoller:
    def __init__(self, app: AppContext, interval: float) -> None:
        self.app = app
        self.interval = interval
        self.wakeup = asyncio.Event()
        self._since: dt.datetime | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="play-voided-purchases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def poll(self) -> dict[str, int]:
        """One poll: {outcome: count}. Raises StoreUnavailable if Play could not be asked."""
        play = self.app.stores.play
        assert play is not None
        started = self.app.clock.now()
        since = max(self._since or started - VOIDED_WINDOW, started - VOIDED_WINDOW)
        loop = asyncio.get_running_loop()
        revocations = await loop.run_in_executor(self.app.executor, play.voided, since)
        counts: dict[str, int] = {}
        for revocation in revocations:
            outcome = await self.app.run(apply_revocation, self.app, revocation)
            counts[outcome] = counts.get(outcome, 0) + 1
        self._since = started - VOIDED_OVERLAP
        if counts:
            log.info("Play voided purchases applied", extra={"outcomes": counts})
        return counts

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("Play voided purchases not polled", extra={"detail": str(exc)})
            except ReceiptInvalid:  # 400/404: the package name or the service account's access is wrong
                log.error(
                    "Google Play refused the voided purchases request: check FACEHARMONY_PLAY_PACKAGE_NAME and access"
                )
            except Exception:
                log.exception("Play voided purchases poll failed")
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            self.wakeup.clear()
