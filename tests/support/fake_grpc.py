"""What the local servers that speak Google's gRPC protocols (fake_vision.py, fake_kms.py) share: one
generic handler served on 127.0.0.1 with a port the kernel picks."""

from __future__ import annotations

from concurrent import futures

import grpc


def serve_on_loopback(handler: grpc.GenericRpcHandler, workers: int = 8) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    if not port:
        raise RuntimeError("could not bind a port on 127.0.0.1")
    server.start()
    return server, port
