"""gRPC server reflection under both of its names, `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

Newer tools (grpcurl 1.9+, Postman) ask for `grpc.reflection.v1` first, some for nothing else; older ones
(grpcurl 1.8) ask for `v1alpha`. grpcio-reflection (1.81, and still 1.85) ships only `v1alpha`, whose
messages are the same as v1's field for field (v1 is the frozen copy of v1alpha), so one servicer serves
both:

* `v1alpha`: grpcio-reflection's own `enable_server_reflection`.
* `v1`: the same servicer registered under the v1 service name with a generic handler (the bytes on
  the wire are identical), and v1's file descriptor (`grpc/reflection/v1/reflection.proto`, package
  `grpc.reflection.v1`: v1alpha's descriptor renamed) added to the default descriptor pool, so a
  client that reflects on the reflection service itself finds v1's messages.

`enable_server_reflection(service_names, server)` registers both and lists both names.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection as reflection_v1alpha
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

V1ALPHA_SERVICE_NAME = reflection_v1alpha.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def _v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto with v1's file name, package and options."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old = f".{proto.package}."
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.ClearField("deprecated")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = f".{V1_PACKAGE}." + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{V1_PACKAGE}." + method.input_type[len(old) :]
            method.output_type = f".{V1_PACKAGE}." + method.output_type[len(old) :]
    return proto


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.AddSerializedFile(_v1_file_descriptor().SerializeToString())


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection on `server` under v1 and v1alpha; both names are listed with `service_names`."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    names = [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    reflection_v1alpha.enable_server_reflection(names, server, pool)
    servicer = reflection_v1alpha.aio.ReflectionServicer(names, pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
