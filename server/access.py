"""The access rule of every RPC, read from the `(faceharmony.v1.access)` option in the .proto files.

Deny by default: the server refuses to start when an RPC of a faceharmony.v1
service declares no rule. The standard health and reflection services are
public.
"""

from __future__ import annotations

from google.protobuf import descriptor

from faceharmony.v1 import (
    account_pb2,
    admin_pb2,
    model_pb2,
    options_pb2,
    order_pb2,
    photo_pb2,
    purchase_pb2,
    support_pb2,
)

PUBLIC = options_pb2.ACCESS_PUBLIC
USER = options_pb2.ACCESS_USER
USER_OR_DEACTIVATED = options_pb2.ACCESS_USER_OR_DEACTIVATED
STAFF = options_pb2.ACCESS_STAFF
ADMIN = options_pb2.ACCESS_ADMIN

SERVICE_FILES = (account_pb2, photo_pb2, model_pb2, order_pb2, purchase_pb2, support_pb2, admin_pb2)
PUBLIC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


def service_descriptors() -> list[descriptor.ServiceDescriptor]:
    return [svc for module in SERVICE_FILES for svc in module.DESCRIPTOR.services_by_name.values()]


def build_policy() -> dict[str, int]:
    """Maps '/package.Service/Method' to its access rule."""
    policy: dict[str, int] = {}
    missing = []
    for svc in service_descriptors():
        for method in svc.methods:
            rule = method.GetOptions().Extensions[options_pb2.access]
            if rule == options_pb2.ACCESS_UNSPECIFIED:
                missing.append(method.full_name)
            policy[f"/{svc.full_name}/{method.name}"] = rule
    if missing:
        raise RuntimeError("RPCs without an access rule: " + ", ".join(missing))
    return policy


def rule_for(policy: dict[str, int], method: str) -> int | None:
    """The rule of a method path; PUBLIC for the standard services; None (deny) for anything else."""
    if method in policy:
        return policy[method]
    service = method.strip("/").split("/")[0]
    if service in PUBLIC_SERVICES:
        return PUBLIC
    return None
