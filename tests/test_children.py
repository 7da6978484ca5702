"""A supervisor killed with SIGKILL leaves no child behind (core/children.py): the kernel sends the child SIGTERM.

Real processes: a parent Python process that starts a child through `die_with_parent`, and the real
`faceharmony-triton` wrapper, whose tritonserver must not be orphaned holding its ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.support.triton import require_triton
from tests.support.wait import wait_for

pytestmark = pytest.mark.processes

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from faceharmony.core.children import die_with_parent
    tie = sys.argv[1] == "tied"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             preexec_fn=die_with_parent() if tie else None)
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start_parent(mode: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True)
    return parent, int(parent.stdout.readline())


def test_a_tied_child_ends_when_its_parent_is_killed_and_an_untied_one_would_not():
    tied_parent, tied = start_parent("tied")
    loose_parent, loose = start_parent("loose")
    try:
        for parent in (tied_parent, loose_parent):
            parent.kill()
            parent.wait()
        wait_for(lambda: gone(tied), 30, "the tied child to end")
        assert not gone(loose)  # the control: without the tie the kernel leaves the child running
    finally:
        for pid in (tied, loose):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.triton
def test_a_sigkilled_triton_wrapper_takes_tritonserver_with_it(tmp_path):
    require_triton()
    from tests.support.triton_wrapper import echo_repository, run_triton, stop, wait_ready

    repo, _ = echo_repository(tmp_path / "models")
    proc, grpc_port, _ = run_triton(tmp_path, repo)
    try:
        client = wait_ready(proc, f"127.0.0.1:{grpc_port}", tmp_path / "triton.log")
        client.close()
        servers = [p for p in psutil.Process(proc.pid).children() if p.name() == "tritonserver"]
        assert len(servers) == 1
        proc.kill()
        proc.wait()
        wait_for(lambda: gone(servers[0].pid), 60, "tritonserver to end with its wrapper")
    finally:
        stop(proc)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
