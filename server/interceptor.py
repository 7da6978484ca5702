"""The one interceptor every RPC passes through: decodes the request safely, bounds the calls in progress (server/limits.py), authenticates and authorises the caller, turns errors into statuses with reasons, and logs one line per call (ids and codes only).

Nothing a client sends may come out as UNKNOWN or INTERNAL: undecodable
request bytes become INVALID_ARGUMENT, database outages UNAVAILABLE, and only
a bug in the server itself (logged with its traceback) yields INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc
import peewee as pw
from google.protobuf.message import DecodeError

from faceharmony.core import metrics
from faceharmony.core.keys.errors import KeysError, KeyShredded, KeysUnavailable
from faceharmony.server import access
from faceharmony.server.auth import authorize, bearer_token
from faceharmony.server.context import AppContext, Principal, current_principal
from faceharmony.server.errors import ApiError
from faceharmony.server.limits import CallLimits, Slot, kind_of

log = logging.getLogger("faceharmony.server.rpc")


def keys_error(exc: KeysError) -> ApiError:
    """The key layer's failures as statuses with their stable reasons (core/keys/errors.py)."""
    if isinstance(exc, KeysUnavailable):
        log.warning("keys unavailable", extra={"reason": exc.reason})
        return ApiError(grpc.StatusCode.UNAVAILABLE, exc.reason, "the key service is temporarily unavailable; retry")
    if isinstance(exc, KeyShredded):
        return ApiError(grpc.StatusCode.NOT_FOUND, exc.reason, "this data was permanently deleted")
    log.error("personal data does not decrypt", extra={"reason": exc.reason})
    return ApiError(grpc.StatusCode.DATA_LOSS, exc.reason, "stored data failed its integrity check")


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""


UNDECODABLE = _Undecodable()


def _safe_deserializer(deserialize):
    if deserialize is None:
        return None

    def wrapped(data: bytes):
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError, RuntimeError):
            return UNDECODABLE

    return wrapped


def _to_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, KeysError):
        return keys_error(exc)
    if isinstance(exc, (pw.OperationalError, pw.InterfaceError)):
        log.warning("database unavailable", extra={"error": type(exc).__name__})
        return ApiError(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "the service is temporarily unavailable; retry")
    log.exception("unhandled error")
    return ApiError(grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", "internal error")


async def _abort(context: grpc.aio.ServicerContext, error: ApiError) -> None:
    await context.abort(
        error.code,
        error.message,
        trailing_metadata=(("grpc-status-details-bin", error.to_status_proto().SerializeToString()),),
    )


class _Call:
    """One RPC's before and after, the same for every kind of handler: the wrappers differ only in how they
    call the behaviour inside `async with _Call(...) as rpc: await rpc.admit(request); ...`.

    `admit` takes the server's slot (SERVER_BUSY when none is free) before anything else, so sign-in floods
    are bounded too, refuses undecodable requests, authenticates and authorises the caller, then takes the
    account's slot (TOO_MANY_CONCURRENT_CALLS). Leaving the block turns any error into its status (aborting
    the call), gives the slots back and logs the call. Aborts, cancellation, GeneratorExit and
    KeyboardInterrupt pass through unchanged.
    """

    def __init__(
        self,
        app: AppContext,
        limits: CallLimits,
        method: str,
        rule: int | None,
        token: str | None,
        kind: str | None,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.app, self.limits, self.method, self.rule, self.token = app, limits, method, rule, token
        self.kind, self.context = kind, context
        self.started = time.perf_counter()
        self.principal: Principal | None = None
        self.code = grpc.StatusCode.OK
        self.slot: Slot | None = None
        self.labels = metrics.split_method(method)
        metrics.RPC_STARTED.labels(*self.labels).inc()

    async def __aenter__(self) -> _Call:
        return self

    async def admit(self, request) -> None:
        if self.kind is not None:
            self.slot = self.limits.enter(self.kind)
        if request is UNDECODABLE:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "the request could not be decoded")
        if self.rule != access.PUBLIC:
            self.principal = await self.app.run(authorize, self.app, self.method, self.rule, self.token)
        if self.slot is not None and self.principal is not None:
            self.slot.add_account(self.principal.account_id)
        current_principal.set(self.principal)

    async def __aexit__(self, exc_type, exc: BaseException | None, tb) -> bool:
        try:
            if isinstance(exc, asyncio.CancelledError):
                self.code = grpc.StatusCode.CANCELLED
            elif isinstance(exc, grpc.aio.AbortError):  # the handler aborted with its own status
                self.code = _set_code(self.context)
            if exc is None or isinstance(exc, (GeneratorExit, KeyboardInterrupt)) or _is_abort(exc):
                return False
            error = _to_api_error(exc)
            self.code = error.code
            await _abort(self.context, error)  # raises AbortError
            return True
        finally:
            if self.slot is not None:
                self.slot.release()
            seconds = time.perf_counter() - self.started
            metrics.RPC_HANDLED.labels(*self.labels, self.code.name).inc()
            metrics.RPC_SECONDS.labels(*self.labels).observe(seconds)
            log.info(
                "rpc",
                extra={
                    "method": self.method,
                    "code": self.code.name,
                    "duration_ms": round(seconds * 1000, 2),
                    "account_id": self.principal.account_id if self.principal else None,
                },
            )


class ApiInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, app: AppContext, limits: CallLimits | None = None) -> None:
        self.app = app
        self.policy = access.build_policy()
        self.limits = limits or CallLimits(app.settings)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        call = functools.partial(
            _Call,
            self.app,
            self.limits,
            method,
            access.rule_for(self.policy, method),
            bearer_token(handler_call_details.invocation_metadata),
            kind_of(method, handler.response_streaming),
        )

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request, context):
                async with call(context) as rpc:
                    await rpc.admit(request)
                    return await inner(request, context)

            wrapper = unary_response
            factory = (
                grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            )
        else:
            inner_stream = handler.unary_stream or handler.stream_stream

            async def stream_response(request, context):
                async with call(context) as rpc:
                    await rpc.admit(request)
                    async for item in inner_stream(request, context):
                        yield item

            wrapper = stream_response
            factory = (
                grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
            )
        return factory(
            wrapper,
            request_deserializer=_safe_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _set_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a handler's own context.abort set (UNKNOWN if the context cannot say)."""
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):
        return grpc.StatusCode.UNKNOWN
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)


def _is_abort(exc: BaseException) -> bool:
    """context.abort raises AbortError, and a cancelled call CancelledError: let both through."""
    return isinstance(exc, (grpc.aio.AbortError, asyncio.CancelledError))
