"""The services whose issues are still open (orders): every RPC answers UNIMPLEMENTED with reason NOT_IMPLEMENTED, after the same authentication as the finished ones."""

from __future__ import annotations

from faceharmony.server.errors import not_implemented
from faceharmony.v1 import order_pb2_grpc


def _unary(issue: str):
    async def method(self, request, context):
        raise not_implemented(issue)

    return method


def _stream(issue: str):
    async def method(self, request, context):
        raise not_implemented(issue)
        yield  # pragma: no cover - makes this an async generator

    return method


def _pending(base: type, issue: str, streams: tuple[str, ...]) -> type:
    names = [n for n in vars(base) if not n.startswith("_")]
    body = {n: (_stream(issue) if n in streams else _unary(issue)) for n in names}
    return type(base.__name__.removesuffix("Servicer"), (base,), body)


OrderService = _pending(order_pb2_grpc.OrderServiceServicer, "orders issue", ("WatchOrder", "DownloadGeneratedPhoto"))
