"""A test run stopped with SIGTERM stops its throwaway PostgreSQL cluster and removes its folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.postgres import find_bindir
from tests.support.wait import wait_for

pytestmark = pytest.mark.processes

INNER = """
import time
from pathlib import Path


def test_holds_the_cluster(pg_cluster):
    Path({marker!r}).write_text(str(pg_cluster.root))
    time.sleep(300)
"""


def test_sigterm_stops_and_removes_the_cluster(tmp_path):
    if find_bindir() is None and not os.environ.get("CI"):
        pytest.skip("PostgreSQL server binaries not installed")
    marker = tmp_path / "cluster-root"
    inner = tmp_path / "test_inner.py"
    inner.write_text(INNER.format(marker=str(marker)))
    root = Path(__file__).resolve().parents[1]
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", str(inner)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: marker.exists() and marker.read_text(), 120, "the inner run's cluster")
        cluster = Path(marker.read_text())
        assert (cluster / "data" / "postmaster.pid").exists()
        run.send_signal(signal.SIGTERM)
        run.wait(60)
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.monotonic() + 30
    while cluster.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cluster.exists(), run.stdout.read() if run.stdout else ""
