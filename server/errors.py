"""API errors: a gRPC status code plus a google.rpc.ErrorInfo detail with a stable reason (API.md).

Logic raises ApiError; the interceptor turns it into the status the client
sees. The reason strings are the names of faceharmony.v1.ErrorReason without
the ERROR_REASON_ prefix, checked against that enum here so a typo fails
when the module is imported, not in production.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from faceharmony.v1 import errors_pb2

DOMAIN = "faceharmony.app"
_PREFIX = "ERROR_REASON_"
REASONS = frozenset(
    name[len(_PREFIX) :] for name in errors_pb2.ErrorReason.keys() if name != "ERROR_REASON_UNSPECIFIED"
)


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str, **metadata: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown error reason {reason!r}")
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata

    def to_status_proto(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])


def invalid(reason: str, message: str, **metadata: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, **metadata)


def not_found(what: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", f"{what} not found")


def precondition(reason: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, reason, message)


def denied(message: str = "this call needs a staff role") -> ApiError:
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", message)


def unauthenticated(reason: str = "UNAUTHENTICATED", message: str = "sign in first") -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, reason, message)


def rate_limited(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", message)


def not_implemented(issue: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", f"not implemented yet ({issue})")
