"""Triton's Python-backend shared memory (requests, generated images) is not left in /dev/shm by a SIGKILLed server (P9, P16).

The lock semantics are checked with a real child process holding a launch's
lock; then the real Triton server from the wheel is SIGKILLed (server and
stubs), its regions found left behind, and the next start removes them.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from faceharmony.triton_launcher.shm import REGION_PREFIX, SHM_DIR, ShmLease, sweep_regions
from tests.support.triton import require_triton, triton_env
from tests.support.wait import wait_for

pytestmark = pytest.mark.processes


def test_a_launchs_regions_are_swept_only_once_every_process_holding_its_lock_is_gone(tmp_path):
    shm, locks = tmp_path / "shm", tmp_path / "locks"
    shm.mkdir()
    lease = ShmLease(locks)
    assert stat.S_IMODE(os.stat(lease.lock_path).st_mode) == 0o600 and lease.backend_arg.endswith(lease.prefix)
    regions = [shm / f"{lease.prefix}{i}" for i in range(2)]
    other = shm / "triton_python_backend_shm_region_someone-else"
    for path in (*regions, other):
        path.write_bytes(b"generated image bytes")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, pass_fds=(lease.fd,)
    )
    try:
        lease.handed_over()
        assert sweep_regions(locks, shm) == 0 and all(p.exists() for p in regions)  # the child holds the lock
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
    assert sweep_regions(locks, shm) == 2
    assert [p.name for p in shm.iterdir()] == [other.name] and list(locks.iterdir()) == []
    assert sweep_regions(locks, shm) == 0 and sweep_regions(tmp_path / "missing", shm) == 0


def own_regions(work_dir: Path) -> list[Path]:
    tokens = [lock.stem for lock in (work_dir / "shm").glob("*.lock")]
    return [p for token in tokens for p in SHM_DIR.glob(f"{REGION_PREFIX}{token}_*")]


@pytest.mark.triton
def test_a_sigkilled_triton_leaves_no_shared_memory_after_the_next_start(tmp_path):
    require_triton()
    from faceharmony.core.diffusion.pipeline import build_tiny_pipeline
    from faceharmony.triton_launcher.server import start_triton

    data = tmp_path / "data"
    build_tiny_pipeline(data / "base-model", seed=0)
    work = tmp_path / "triton"
    first = start_triton(work, env=triton_env(data), ready_timeout=240)
    try:
        left = own_regions(work)
        assert left, "the Python backend made no region under this launch's prefix"
        os.killpg(first.process.pid, signal.SIGKILL)  # the server and its stubs
        first.process.wait()
        assert all(p.exists() for p in left)  # SIGKILL: nobody unlinked them
    finally:
        first.stop()  # sweeps once the killed stubs have let go of the lock
    wait_for(
        lambda: sweep_regions(work / "shm") >= 0 and not [p for p in left if p.exists()], what="the killed stubs' exit"
    )

    # A launch killed with its launcher (no stop() ran): the next start removes what it left.
    lease_dir = work / "shm"
    stale = ShmLease(lease_dir)
    region = SHM_DIR / f"{stale.prefix}0"
    region.write_bytes(b"generated image bytes")
    stale.handed_over()
    with start_triton(work, env=triton_env(data), ready_timeout=240) as second:
        assert not region.exists()
        assert own_regions(work)  # the running server's regions stay
        assert second.process.poll() is None
    assert own_regions(work) == [] and list(lease_dir.glob("*.lock")) == []


@pytest.fixture(autouse=True)
def _no_stray_regions():
    before = {p.name for p in SHM_DIR.glob(f"{REGION_PREFIX}*")}
    yield
    for p in SHM_DIR.glob(f"{REGION_PREFIX}*"):
        if p.name not in before and p.name.endswith("_0"):
            p.unlink(missing_ok=True)
