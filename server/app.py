"""Assembles the API server: `create_server(settings) -> (server, port)` builds and binds it; `serve()` runs it until the process is stopped (SIGTERM/SIGINT, core/process.py) and shuts down gracefully.

The server owns a thread pool for database work, the email delivery loop, gRPC
health checking (every service reported SERVING while up, NOT_SERVING while
draining) and server reflection (grpc.reflection.v1 and v1alpha, server/reflection.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import grpc
from google.auth.exceptions import GoogleAuthError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from faceharmony.core.blobstore.base import BlobStore, Role
from faceharmony.core.blobstore.factory import open_blob_store
from faceharmony.core.blobstore.reseal import reseal_legacy_blobs
from faceharmony.core.clock import Clock, SystemClock
from faceharmony.core.crypto import Hasher
from faceharmony.core.datadir import prepare_data_dir
from faceharmony.core.db.connection import close_database, open_database
from faceharmony.core.db.migrate import migrate, pending
from faceharmony.core.email.queue import deliver_due
from faceharmony.core.email.transports import Transport, make_transport
from faceharmony.core.keys.factory import check_database, install_keyring
from faceharmony.core.process import MIGRATE_HINT, Entry, Refused
from faceharmony.core.settings import Settings
from faceharmony.core.stores import open_stores
from faceharmony.core.verify.base import Verifier
from faceharmony.core.verify.factory import make_verifier
from faceharmony.server import reflection
from faceharmony.server.access import service_descriptors
from faceharmony.server.context import AppContext
from faceharmony.server.interceptor import ApiInterceptor
from faceharmony.server.limits import CallLimits, hard_limit
from faceharmony.server.logic.purchases import key_legacy_purchases
from faceharmony.server.services import account, admin, model, order, photo, purchase, support
from faceharmony.server.store_sync import AppStoreNotifications, PlayVoidedPoller
from faceharmony.server.verify_queue import VerifyQueue
from faceharmony.server.watch import MODELS, ORDERS, WatchHub
from faceharmony.v1 import (
    account_pb2_grpc,
    admin_pb2_grpc,
    model_pb2_grpc,
    order_pb2_grpc,
    photo_pb2_grpc,
    purchase_pb2_grpc,
    support_pb2_grpc,
)

log = logging.getLogger(__name__)
EMAIL_POLL_SECONDS = 5.0


class ApiServer:
    """The gRPC server plus what runs beside it (email delivery). Mirrors grpc.aio.Server's start/stop."""

    def __init__(
        self,
        server: grpc.aio.Server,
        app: AppContext,
        transport: Transport,
        health_servicer,
        verify_executor: concurrent.futures.ThreadPoolExecutor,
    ) -> None:
        self.grpc_server = server
        self.verify_executor = verify_executor
        self.app = app
        self.transport = transport
        self.health = health_servicer
        self._email_task: asyncio.Task | None = None
        self.watch_hub: WatchHub | None = None
        self.order_hub: WatchHub | None = None
        self.limits: CallLimits | None = None  # calls in progress (server/limits.py)
        self.verify_queue: VerifyQueue | None = None
        self.app_store_notifications: AppStoreNotifications | None = None
        self.play_voided: PlayVoidedPoller | None = None

    async def start(self) -> None:
        await self.grpc_server.start()
        self._email_task = asyncio.create_task(self._deliver_emails(), name="email-delivery")
        self.watch_hub.start()
        self.order_hub.start()
        if self.app_store_notifications is not None:
            await self.app_store_notifications.start()
        if self.play_voided is not None:
            self.play_voided.start()
        await self._set_serving(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        await self._set_serving(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc_server.stop(grace)
        await self.watch_hub.stop()
        await self.order_hub.stop()
        if self.app_store_notifications is not None:
            await self.app_store_notifications.stop()
        if self.play_voided is not None:
            await self.play_voided.stop()
        if self._email_task is not None:
            self._email_task.cancel()
            await asyncio.gather(self._email_task, return_exceptions=True)
        self.app.executor.shutdown(wait=True)
        self.verify_executor.shutdown(wait=True)
        close_database(self.app.db)

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()

    def wake_email(self) -> None:
        self.app.email_wakeup.set()

    async def deliver_emails_now(self) -> int:
        s = self.app.settings
        return await self.app.run(deliver_due, self.app.db, self.transport, self.app.clock, s.email_from)

    async def _set_serving(self, status) -> None:
        names = [""] + [svc.full_name for svc in service_descriptors()]
        for name in names:
            await self.health.set(name, status)

    async def _deliver_emails(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.app.email_wakeup.wait(), timeout=EMAIL_POLL_SECONDS)
            except TimeoutError:
                pass
            self.app.email_wakeup.clear()
            try:
                while await self.deliver_emails_now():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("email delivery round failed")


async def create_server(
    settings: Settings,
    *,
    clock: Clock | None = None,
    verifier: Verifier | None = None,
    photo_store: BlobStore | None = None,
) -> tuple[ApiServer, int]:
    """Builds the server on settings.listen (port 0 picks a free port) and returns it with the bound port.

    The verifier and the photo store default to the configured ones; tests may
    pass others (e.g. a store whose backend fails on purpose).
    """
    clock = clock or SystemClock()
    prepare_data_dir(settings.data_dir)  # 0700, an old loose one tightened (core/datadir.py)
    # The data keys (core/keys): before the database, whose personal columns they seal (migration 0008 too);
    # a missing or wrong KEK stops the start here (KeysUnavailable: one line and exit 2, core/process.py).
    keyring = install_keyring(settings)
    db = open_database(settings.resolved_database_url, settings.database_pool_size)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=settings.database_pool_size, thread_name_prefix="db")
    app = AppContext(settings=settings, db=db, clock=clock, hasher=Hasher(settings.secret()), executor=executor)
    if settings.auto_migrate:
        await app.run(migrate, db)
        await app.run(reseal_legacy_blobs, db, settings)  # the blobs an older version left plain
    elif await app.run(pending, db):
        raise Refused(MIGRATE_HINT)  # faceharmony-server: one line and exit 2, as every other process
    await app.run(check_database, keyring, db)  # the keys folder or bucket belongs to this database
    await app.run(key_legacy_purchases, app)  # App Store rows from before receipts were verified get their key
    loop = asyncio.get_running_loop()
    try:
        app.stores = await loop.run_in_executor(executor, open_stores, settings)
    except (OSError, ValueError, GoogleAuthError) as exc:  # a root certificate missing or not one; no credentials
        raise Refused(f"the store settings cannot be used: {type(exc).__name__}: {exc}") from None
    verifier = verifier or await loop.run_in_executor(executor, make_verifier, settings)
    photo_store = photo_store or await loop.run_in_executor(executor, open_blob_store, settings, Role.API)
    verify_executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=settings.verifier_workers, thread_name_prefix="verify"
    )
    verify_queue = VerifyQueue(
        verify_executor,
        settings.verifier_workers,
        settings.verify_queue_size,
        settings.verify_max_pixels_in_flight,
        settings.verify_queue_wait_seconds,
    )
    limits = CallLimits(settings)

    server = grpc.aio.server(
        interceptors=[ApiInterceptor(app, limits)],
        # The hard outer bound, refused by gRPC before the request is read (no ErrorInfo); ours answer first.
        maximum_concurrent_rpcs=hard_limit(settings),
        options=[
            ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", settings.max_send_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    api = ApiServer(server, app, make_transport(settings), health_servicer, verify_executor)
    api.limits, api.verify_queue = limits, verify_queue
    if app.stores.app_store is not None and settings.app_store_notifications_listen:
        api.app_store_notifications = AppStoreNotifications(app, settings.app_store_notifications_listen)
    if app.stores.play is not None:
        api.play_voided = PlayVoidedPoller(app, settings.play_voided_poll_seconds)
    wake = api.wake_email
    account_pb2_grpc.add_AccountServiceServicer_to_server(account.AccountService(app, wake), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin.AdminService(app, wake), server)
    purchase_pb2_grpc.add_PurchaseServiceServicer_to_server(purchase.PurchaseService(app), server)
    support_pb2_grpc.add_SupportServiceServicer_to_server(support.SupportService(app), server)
    photo_pb2_grpc.add_PhotoServiceServicer_to_server(
        photo.PhotoService(app, photo_store, verifier, verify_queue), server
    )
    hub = WatchHub(app, settings.watch_poll_seconds, MODELS)
    api.watch_hub = hub
    model_pb2_grpc.add_ModelServiceServicer_to_server(model.ModelService(app, hub), server)
    api.order_hub = WatchHub(app, settings.watch_poll_seconds, ORDERS)
    # The API role reads generated/ (previews, downloads) and may create only photos/.
    order_pb2_grpc.add_OrderServiceServicer_to_server(order.OrderService(app, photo_store, api.order_hub), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [svc.full_name for svc in service_descriptors()]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME], server)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise Refused(f"could not bind the listen address {settings.listen}")
    return api, port


async def serve(settings: Settings, entry: Entry) -> None:
    """Runs the server until the process is told to stop (`entry`: SIGTERM/SIGINT), then shuts down gracefully."""
    api, port = await create_server(settings)
    await api.start()
    log.info("server listening", extra={"port": port, "database": settings.resolved_database_url.split(":", 1)[0]})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    entry.on_stop(lambda _signum: loop.call_soon_threadsafe(stopping.set))  # at once if already signalled
    await stopping.wait()
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await api.stop(settings.shutdown_grace_seconds)
    log.info("stopped")
