"""faceharmony-triton with NGC's tritonserver and backends (docker/Dockerfile.triton): the same locked-down flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from faceharmony.triton_launcher.server import RESTRICTED_PROTOCOLS, server_command, server_env

NGC_BINARY = Path("/opt/tritonserver/bin/tritonserver")
NGC_BACKENDS = Path("/opt/tritonserver/backends")


def _flags(cmd: list[str]) -> list[str]:
    """The command's flags, less what differs by design: the binary, the backend folder, the drawn key."""
    return [
        arg.rsplit("=", 1)[0] if arg.startswith("--grpc-restricted-protocol=") else arg
        for arg in cmd[1:]
        if not arg.startswith("--backend-directory=")
    ]


def test_ngc_mode_runs_the_named_binary_with_its_backends_and_the_same_flags():
    view = Path("/var/lib/faceharmony/triton/repositories/abc")
    ngc = server_command(view, NGC_BACKENDS, grpc_port=8001, metrics_port=8002, address="0.0.0.0", binary=NGC_BINARY)
    wheel = server_command(view, Path("/elsewhere"), grpc_port=8001, metrics_port=8002, address="0.0.0.0")
    assert ngc[0] == str(NGC_BINARY) and wheel[0] != str(NGC_BINARY)
    assert f"--backend-directory={NGC_BACKENDS}" in ngc
    assert _flags(ngc) == _flags(wheel)
    assert "--model-control-mode=none" in ngc and "--allow-http=false" in ngc
    restricted = next(a for a in ngc if a.startswith("--grpc-restricted-protocol="))
    assert restricted.split("=", 1)[1].split(":", 1)[0] == ",".join(RESTRICTED_PROTOCOLS)


def test_ngc_mode_leaves_the_wheels_libraries_out_of_the_environment():
    env = server_env({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/tritonserver/lib"}, wheel=False)
    assert "nvidia_pytriton.libs" not in env["LD_LIBRARY_PATH"]
    assert env["LD_LIBRARY_PATH"].endswith("/opt/tritonserver/lib")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


@pytest.mark.processes
@pytest.mark.parametrize(
    "flags, says",
    [
        (["--tritonserver", "/nonexistent/tritonserver"], "no tritonserver at /nonexistent/tritonserver"),
        (["--backend-directory", "/nonexistent/backends"], "no Python backend in /nonexistent/backends"),
    ],
)
def test_a_wrong_ngc_path_is_refused_in_one_line(tmp_path, flags, says):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env["FACEHARMONY_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "faceharmony.triton_launcher", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert says in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
