"""What Triton exposes when `faceharmony-triton` (and so `make up`) runs it: every listener on 127.0.0.1 unless
FACEHARMONY_TRITON_LISTEN_ADDRESS says otherwise, no HTTP, and only the protocols the order side uses
(inference, health, statistics); the model-repository API (load/unload, which can run code through the
Python backend) is refused, even to a caller holding the restricted-protocol key from Triton's command line.

Runs the real server from the nvidia-pytriton wheel on a repository of two tiny Python-backend models:
`echo` (served) and `probe` (never to be loaded: its `initialize` writes a marker file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.triton import require_triton

require_triton()

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from faceharmony.triton_launcher.server import RESTRICTED_HEADER  # noqa: E402
from tests.support.listeners import listening  # noqa: E402
from tests.support.triton_wrapper import echo_repository, run_triton, stop, wait_ready  # noqa: E402

pytestmark = [pytest.mark.processes, pytest.mark.triton]


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> tuple[Path, Path]:
    return echo_repository(tmp_path_factory.mktemp("exposure"))


def echo(client, value: int) -> int:
    x = grpcclient.InferInput("X", [1], "INT32")
    x.set_data_from_numpy(np.array([value], dtype=np.int32))
    return int(client.infer("echo", [x]).as_numpy("Y")[0])


def refused(call) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.message()


def restricted_key(pid: int) -> str:
    """The restricted-protocol key, read from tritonserver's command line as any local user could."""
    import psutil

    for proc in psutil.Process(pid).children(recursive=True):
        for arg in proc.cmdline():
            if arg.startswith("--grpc-restricted-protocol="):
                return arg.rsplit("=", 1)[1]
    raise AssertionError("no --grpc-restricted-protocol on tritonserver's command line")


def test_listeners_are_on_loopback_and_the_repository_api_is_refused(tmp_path, repository):
    repo, marker = repository
    proc, grpc_port, metrics_port = run_triton(tmp_path, repo)
    try:
        client = wait_ready(proc, f"127.0.0.1:{grpc_port}", tmp_path / "triton.log")
        # gRPC and metrics on loopback; no HTTP listener at all.
        assert listening(proc.pid) == {("127.0.0.1", grpc_port), ("127.0.0.1", metrics_port)}

        # What the order side uses still works: inference, health, statistics.
        assert echo(client, 41) == 41
        assert client.is_server_ready() and client.is_model_ready("echo")
        assert client.get_inference_statistics("echo").model_stats[0].inference_stats.success.count >= 1

        # The model-repository API and the other unused protocols are refused.
        for call in (
            lambda: client.load_model("probe"),
            lambda: client.unload_model("echo"),
            lambda: client.get_model_repository_index(),
            lambda: client.get_model_config("echo"),
            lambda: client.get_model_metadata("echo"),
            lambda: client.get_system_shared_memory_status(),
            lambda: client.get_log_settings(),
            lambda: client.get_trace_settings(),
        ):
            assert "restricted" in refused(call)
        # Even with the key from Triton's command line, no model can be loaded or unloaded.
        header = {f"triton-grpc-protocol-{RESTRICTED_HEADER}": restricted_key(proc.pid)}
        assert "not allowed" in refused(lambda: client.load_model("probe", headers=header))
        assert "not allowed" in refused(lambda: client.unload_model("echo", headers=header))
        assert not marker.exists()
        assert client.is_model_ready("echo") and echo(client, 7) == 7
        client.close()
    finally:
        stop(proc)


def test_listeners_follow_the_listen_address_setting(tmp_path, repository):
    repo, _ = repository
    proc, grpc_port, metrics_port = run_triton(tmp_path, repo, FACEHARMONY_TRITON_LISTEN_ADDRESS="127.0.0.2")
    try:
        client = wait_ready(proc, f"127.0.0.2:{grpc_port}", tmp_path / "triton.log")
        assert listening(proc.pid) == {("127.0.0.2", grpc_port), ("127.0.0.2", metrics_port)}
        assert echo(client, 5) == 5
        client.close()
    finally:
        stop(proc)
