"""What every request handler and logic function needs: settings, the database, the clock, the hasher and the email wake-up; and `run`, which executes a blocking logic function on the database thread pool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import peewee as pw

from faceharmony.core.clock import Clock
from faceharmony.core.crypto import Hasher
from faceharmony.core.db.sealed import open_all
from faceharmony.core.settings import Settings
from faceharmony.core.stores import Stores

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """The signed-in caller, as established by the auth interceptor."""

    account_id: str
    role: str
    state: str
    session_id: str

    @property
    def is_staff(self) -> bool:
        return self.role in ("support", "admin")


current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


@dataclass
class AppContext:
    """Built once per process: by `create_server` (server/app.py) for the API, by server/admin_cli.py for the
    operator commands, which call the logic functions directly and so have no executor."""

    settings: Settings
    db: pw.Database
    clock: Clock
    hasher: Hasher
    executor: concurrent.futures.ThreadPoolExecutor | None = None
    email_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    stores: Stores = field(default_factory=Stores)  # the stores purchases are verified with (core/stores)

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Runs fn(*args, **kwargs) on the database pool; logic raises ApiError for the client."""
        if self.executor is None:
            raise RuntimeError("this AppContext has no database pool")
        loop = asyncio.get_running_loop()
        call = functools.partial(self._with_connection, fn, *args, **kwargs)
        return await loop.run_in_executor(self.executor, contextvars.copy_context().run, call)

    def _with_connection(self, fn: Callable[..., T], *args, **kwargs) -> T:
        self.db.connect(reuse_if_open=True)
        result = fn(*args, **kwargs)
        open_all(result)  # sealed columns opened here, in the pool, never on the event loop (core/db/sealed.py)
        return result

    def principal(self) -> Principal:
        principal = current_principal.get()
        if principal is None:  # the interceptor guarantees one for non-public RPCs
            raise RuntimeError("no principal for a signed-in RPC")
        return principal
