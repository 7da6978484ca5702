"""The one interceptor every RPC passes through: decodes the request safely, bounds the calls in progress (server/limits.py), authenticates and authorises the caller, turns errors into statuses with reasons, and logs one line per call (ids and codes only).

Nothing a client sends may come out as UNKNOWN or INTERNAL: undecodable
request bytes become INVALID_ARGUMENT, database outages UNAVAILABLE, and only
a bug in the server itself (logged with its traceback) yields INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import peewee as pw
from google.protobuf.message import DecodeError

from faceharmony.server import access
from faceharmony.server.auth import authorize, bearer_token
from faceharmony.server.context import AppContext, current_principal
from faceharmony.server.errors import ApiError
from faceharmony.server.limits import CallLimits, Slot, kind_of

log = logging.getLogger("faceharmony.server.rpc")


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
        rule = access.rule_for(self.policy, method)
        token = bearer_token(handler_call_details.invocation_metadata)
        app = self.app
        limits, kind = self.limits, kind_of(method, handler.response_streaming)

        def enter() -> Slot | None:
            """The server's slot for this call (SERVER_BUSY when none is free), taken before authentication."""
            return limits.enter(kind) if kind is not None else None

        def hold(slot: Slot | None, principal) -> None:
            """And the account's (TOO_MANY_CONCURRENT_CALLS), once the caller is known."""
            if slot is not None and principal is not None:
                slot.add_account(principal.account_id)

        async def prepare(request, context):
            if request is UNDECODABLE:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "the request could not be decoded")
            if rule == access.PUBLIC:
                return None
            return await app.run(authorize, app, method, rule, token)

        def finish(started: float, code: grpc.StatusCode, principal) -> None:
            log.info(
                "rpc",
                extra={
                    "method": method,
                    "code": code.name,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "account_id": principal.account_id if principal else None,
                },
            )

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request, context):
                started, principal, code, slot = time.perf_counter(), None, grpc.StatusCode.OK, None
                try:
                    slot = enter()
                    principal = await prepare(request, context)
                    hold(slot, principal)
                    current_principal.set(principal)
                    return await inner(request, context)
                except BaseException as exc:
                    if isinstance(exc, (GeneratorExit, KeyboardInterrupt)) or _is_abort(exc):
                        raise
                    error = _to_api_error(exc)
                    code = error.code
                    await _abort(context, error)
                finally:
                    if slot is not None:
                        slot.release()
                    finish(started, code, principal)

            factory = (
                grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary_response,
                request_deserializer=_safe_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )

        inner_stream = handler.unary_stream or handler.stream_stream

        async def stream_response(request, context):
            started, principal, code, slot = time.perf_counter(), None, grpc.StatusCode.OK, None
            try:
                slot = enter()
                principal = await prepare(request, context)
                hold(slot, principal)
                current_principal.set(principal)
                async for item in inner_stream(request, context):
                    yield item
            except BaseException as exc:
                if isinstance(exc, (GeneratorExit, KeyboardInterrupt)) or _is_abort(exc):
                    raise
                error = _to_api_error(exc)
                code = error.code
                await _abort(context, error)
            finally:
                if slot is not None:
                    slot.release()
                finish(started, code, principal)

        factory = (
            grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            stream_response,
            request_deserializer=_safe_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _is_abort(exc: BaseException) -> bool:
    """context.abort raises AbortError, and a cancelled call CancelledError: let both through."""
    return isinstance(exc, (grpc.aio.AbortError, asyncio.CancelledError))
