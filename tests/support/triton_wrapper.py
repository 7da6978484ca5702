"""`faceharmony-triton` run for real on a repository of two tiny Python-backend models, for the tests of what the
wrapper exposes and how it ends: `echo` (served) and `probe` (never to be loaded: its `initialize` writes a
marker file). Import only after `require_triton()` (tritonclient)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from faceharmony.triton_launcher.server import free_port
from tests.support.wait import wait_for

BIN = Path(sys.executable).parent
CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""
ECHO = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
"""
PROBE = """import pathlib


class TritonPythonModel:
    def initialize(self, args):
        pathlib.Path({marker!r}).write_text("code ran inside Triton")

    def execute(self, requests):
        return []
"""


def echo_repository(root: Path) -> tuple[Path, Path]:
    """(repository, marker): the two models under `root`; `marker` appears only if `probe`'s code ever runs."""
    repo, marker = root / "models", root / "probe-ran"
    for name, code in (("echo", ECHO), ("probe", PROBE.format(marker=str(marker)))):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        (repo / name / "1" / "model.py").write_text(code)
    return repo, marker


def run_triton(tmp_path: Path, repo: Path, **settings: str):
    """`faceharmony-triton` on `repo` serving `echo`; returns (process, grpc port, metrics port)."""
    grpc_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEHARMONY_")}
    env.update(FACEHARMONY_DATA_DIR=str(tmp_path / "data"), **settings)
    log = (tmp_path / "triton.log").open("wb")
    proc = subprocess.Popen(
        [
            str(BIN / "faceharmony-triton"),
            "--model-repository",
            str(repo),
            "--model",
            "echo",
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc, grpc_port, metrics_port


def wait_ready(proc, url: str, log: Path) -> grpcclient.InferenceServerClient:
    client = grpcclient.InferenceServerClient(url)

    def ready() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            return client.is_model_ready("echo")
        except InferenceServerException:
            return False

    wait_for(ready, 120, "Triton's echo model")
    return client


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
