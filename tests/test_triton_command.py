"""The tritonserver command line faceharmony-triton builds (no server started)."""

from __future__ import annotations

from pathlib import Path

from faceharmony.triton_launcher.server import NO_GPU_ARGS, server_command


def command(gpu: bool | None) -> list[str]:
    return server_command(Path("/repo-view"), Path("/backends"), grpc_port=8001, metrics_port=8002, gpu=gpu)


def test_without_a_gpu_triton_is_not_asked_for_pinned_memory_or_gpu_metrics():
    cmd = command(gpu=False)
    assert all(arg in cmd for arg in NO_GPU_ARGS)


def test_with_a_gpu_pinned_memory_and_gpu_metrics_stay_on():
    cmd = command(gpu=True)
    assert not any(arg.startswith(("--allow-gpu-metrics", "--pinned-memory-pool-byte-size")) for arg in cmd)


def test_the_lockdown_holds_either_way():
    for gpu in (False, True):
        cmd = command(gpu)
        assert "--allow-http=false" in cmd and "--model-control-mode=none" in cmd
        assert "--grpc-address=127.0.0.1" in cmd and "--metrics-address=127.0.0.1" in cmd
