"""Reads the google.rpc.ErrorInfo reason out of a failed call."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


def reason_of(error: grpc.RpcError) -> str:
    """The stable reason of a failed call, or "" when the server sent none."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""
