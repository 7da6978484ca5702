"""The server as an operator runs it: its own process from the console entry point, health and reflection for grpcurl, structured logs with no personal data, graceful shutdown on SIGTERM; and the command-line clients end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from faceharmony.server.access import service_descriptors
from faceharmony.v1 import account_pb2 as a
from faceharmony.v1 import account_pb2_grpc

pytestmark = pytest.mark.processes

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server_process(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env.update(
        FACEHARMONY_DATA_DIR=str(tmp_path / "data"),
        FACEHARMONY_LISTEN=f"127.0.0.1:{port}",
        FACEHARMONY_SHUTDOWN_GRACE_SECONDS="5",
    )
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([str(BIN / "faceharmony-server")], env=env, stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 30
    while True:
        try:
            if (
                health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                == health_pb2.HealthCheckResponse.SERVING
            ):
                break
        except grpc.RpcError:
            pass
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        assert time.monotonic() < deadline, "server did not become healthy"
        time.sleep(0.1)
    yield proc, channel, env, tmp_path
    channel.close()
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def test_health_reflection_logs_and_graceful_shutdown(server_process):
    proc, channel, _, tmp_path = server_process
    health = health_pb2_grpc.HealthStub(channel)
    for svc in service_descriptors():
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=svc.full_name)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {svc.full_name for svc in service_descriptors()} <= services
    assert "grpc.health.v1.Health" in services

    accounts = account_pb2_grpc.AccountServiceStub(channel)
    accounts.JoinWaitlist(
        a.JoinWaitlistRequest(name="Logan Private", email="logan.private@example.com", is_16_or_older=True)
    )
    with pytest.raises(grpc.RpcError) as err:
        accounts.JoinWaitlist(a.JoinWaitlistRequest(name="x" * 1000, email="big@example.com", is_16_or_older=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:  # over the message size limit
        accounts.JoinWaitlist(
            a.JoinWaitlistRequest(note="x" * (13 * 1024 * 1024), email="n@example.com", is_16_or_older=True)
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    text = (tmp_path / "server.log").read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    rpcs = [line for line in lines if line.get("message") == "rpc"]
    assert any(r["method"] == "/faceharmony.v1.AccountService/JoinWaitlist" and r["code"] == "OK" for r in rpcs)
    assert any(line.get("message") == "stopped" for line in lines)
    for secret in ("logan", "example.com", "Private"):
        assert secret not in text


def test_a_reflection_only_client_can_call_the_api(server_process):
    """What grpcurl does: learn the messages from the server itself, then call with them."""
    from google.protobuf import descriptor_pool, message_factory

    _, channel, _, _ = server_process
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("faceharmony.v1.AccountService").methods_by_name["JoinWaitlist"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/faceharmony.v1.AccountService/JoinWaitlist",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    call(request_cls(name="Refl", email="refl@example.com", is_16_or_older=True))
    with pytest.raises(grpc.RpcError) as err:
        call(request_cls(name="Refl", email="refl2@example.com"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason = pool.FindEnumTypeByName("faceharmony.v1.ErrorReason").values_by_name[
        "ERROR_REASON_AGE_ATTESTATION_REQUIRED"
    ]
    assert reason.number == 43


def test_reflection_v1_lists_the_services_and_describes_itself(server_process):
    """What grpcurl 1.9+ and Postman do: ask `grpc.reflection.v1` (the v1alpha messages are v1's, byte for byte)."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as r

    _, channel, _, _ = server_process
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=r.ServerReflectionRequest.SerializeToString,
        response_deserializer=r.ServerReflectionResponse.FromString,
    )
    listed, described = call(
        iter(
            [
                r.ServerReflectionRequest(list_services=""),
                r.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
            ]
        ),
        timeout=10,
    )
    services = {s.name for s in listed.list_services_response.service}
    assert {svc.full_name for svc in service_descriptors()} <= services
    assert {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert not described.HasField("error_response"), described.error_response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in described.file_descriptor_response.file_descriptor_proto
    ]
    v1 = next(f for f in files if f.package == "grpc.reflection.v1")
    assert v1.name == "grpc/reflection/v1/reflection.proto"
    method = v1.service[0].method[0]
    assert (v1.service[0].name, method.name, method.input_type) == (
        "ServerReflection",
        "ServerReflectionInfo",
        ".grpc.reflection.v1.ServerReflectionRequest",
    )


def test_command_line_clients_end_to_end(server_process):
    """A newcomer's path through the CLIs: operator makes staff, a person joins, is approved, signs in."""
    proc, channel, env, tmp_path = server_process
    env = dict(
        env,
        FACEHARMONY_CLIENT_SERVER=env["FACEHARMONY_LISTEN"],
        FACEHARMONY_CLIENT_SESSION_FILE=str(tmp_path / "session"),
    )

    def run(*argv, ok=True):
        result = subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env, capture_output=True, text=True, timeout=60)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    assert "nothing to apply" in run("faceharmony-admin", "migrate").stdout
    run("faceharmony-admin", "create-staff", "boss@example.com", "Boss", "--role", "admin")
    refused = run("faceharmony", "join-waitlist", "--name", "Nia", "--email", "nia@example.com", ok=False)
    assert refused.returncode == 1 and "AGE_ATTESTATION_REQUIRED" in refused.stderr
    run("faceharmony", "join-waitlist", "--name", "Nia", "--email", "nia@example.com", "--16-or-older")
    entry_id = run("faceharmony-admin", "waitlist", "--pending").stdout.split()[0]
    run("faceharmony-admin", "approve", entry_id)
    run("faceharmony", "request-code", "nia@example.com")
    outbox = tmp_path / "data" / "outbox"
    code = None
    deadline = time.monotonic() + 15
    while code is None and time.monotonic() < deadline:
        for path in outbox.glob("*.eml") if outbox.exists() else []:
            found = re.search(r"code is: (\d{6})", path.read_text())
            code = code or (found.group(1) if found and "To: nia@example.com" in path.read_text() else None)
        time.sleep(0.1)
    assert code, "no sign-in code reached the outbox"
    signed_in = json.loads(run("faceharmony", "--json", "sign-in", "nia@example.com", "--code", code).stdout)
    assert signed_in["name"] == "Nia" and signed_in["state"] == "ACCOUNT_STATE_ACTIVE"
    assert oct((tmp_path / "session").stat().st_mode & 0o777) == "0o600"
    assert json.loads(run("faceharmony", "--json", "account").stdout)["email"] == "nia@example.com"
    assert json.loads(run("faceharmony", "--json", "balance").stdout)["free_trial_granted"] is True
    run("faceharmony", "sign-out")
    out = run("faceharmony", "account", ok=False)
    assert out.returncode == 3 and "UNAUTHENTICATED" in out.stderr and "faceharmony sign-in" in out.stderr


def test_the_retention_command_is_installed(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env["FACEHARMONY_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [str(BIN / "faceharmony-retention"), "--dry-run"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0 and "nothing was changed" in result.stdout, result.stderr
