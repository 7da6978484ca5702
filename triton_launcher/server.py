"""Running the real Triton Inference Server from the `nvidia-pytriton` wheel on the repository `triton_models/`.

Owns:

* `prepare_backend_dir(folder)`: a Triton backend directory `<folder>/python/` holding symlinks to the
  Python backend (`libtriton_python.so`, `triton_python_backend_utils.py` from
  `site-packages/pytriton/tritonserver/backends/python/`) and to the backend stub for the running Python
  (`pytriton/tritonserver/python_backend_stubs/<X.Y>/triton_python_backend_stub`).
* `prepare_repository_view(repository, models, folder)`: a model repository holding exactly the models to
  serve (symlinks into `repository`), so Triton can run without model control: it loads every model of
  the view at start, and its model-repository API (load/unload, which could run any code through the
  Python backend) answers "not allowed" to everyone.
* `server_command(...)` / `server_env(...)`: the `tritonserver` command line and its environment. What
  Triton exposes, and why:
  - every listener binds to `address` (default 127.0.0.1; FACEHARMONY_TRITON_LISTEN_ADDRESS for
    `faceharmony-triton`): gRPC and metrics; HTTP is off (`--allow-http=false`: nothing here speaks it);
  - `--model-control-mode=none` on the view: no load/unload after start, whatever a caller sends;
  - gRPC protocols: the order worker uses `inference` (images, and EVICT_KEYS evictions, which are
    inference requests), the readiness checks `health`, the tests and the order benchmark `statistics`
    (read-only counters per model and batch size: no personal data, loopback only, so left open);
    every other group (`RESTRICTED_PROTOCOLS`: model-repository, model-config, metadata, shared-memory,
    trace, logging) is restricted to a header whose value is drawn at each start and handed to nobody.
    (It is on Triton's command line, which local users who can list processes may read: the primary
    guard against model loading is the disabled model control, not the key.)
  `--exit-timeout-secs=5`. It runs under umask 077 (`TRITON_UMASK`), so what Triton and its stubs write
  (the stub's `__pycache__` in the backend folder) is private like the rest of the data folder
  (core/datadir.py). The environment: `LD_LIBRARY_PATH` starting with this
  interpreter's `sysconfig` LIBDIR (else the stub may load the system's libpython) then
  `site-packages/nvidia_pytriton.libs`; `PATH` with this interpreter's `bin` first, so the stub runs in this
  environment and `model.py` imports `faceharmony.*` (and numpy<2). FACEHARMONY_* variables pass through
  unchanged: the model reads them with `Settings.from_env()`.
* `TritonServer` / `start_triton(...)`: a started server process for tests and the launcher; waits until
  the models are ready (tritonclient gRPC), stops it with SIGTERM (then SIGKILL) on `stop()`, on leaving its
  `with` block, and at interpreter exit. Each launch names the Python backend's shared-memory regions
  (requests and generated images) with its own prefix and holds a lock on them in `<work dir>/shm`; the
  regions of a server that is gone (a SIGKILL leaves them in /dev/shm) are removed before each start and
  after each stop (`triton_launcher/shm.py`).
* `main()`: the console entry point `faceharmony-triton`: runs the server in the foreground, SIGTERM and
  SIGINT forwarded to it, exit status passed through. The backend directory lives in
  `<FACEHARMONY_DATA_DIR>/triton/backends`, the repository views in `<FACEHARMONY_DATA_DIR>/triton/repositories`.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from faceharmony.core.datadir import private_dir
from faceharmony.triton_launcher.shm import ShmLease, sweep_regions

DEFAULT_MODELS = ("faceharmony_diffusion",)
# The repository next to the project's packages (an editable install or a source checkout).
DEFAULT_REPOSITORY = Path(__file__).resolve().parents[1] / "triton_models"
_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_STUB = "triton_python_backend_stub"
LOOPBACK = "127.0.0.1"
# Triton's gRPC protocol groups the order side never uses (see the module docstring).
RESTRICTED_PROTOCOLS = ("model-repository", "model-config", "metadata", "shared-memory", "trace", "logging")
RESTRICTED_HEADER = "faceharmony-admin"
# Triton and its Python-backend stubs write files we do not control (the stub's __pycache__ beside the
# backend's symlinked triton_python_backend_utils.py, in the data folder): they run under this umask.
TRITON_UMASK = 0o077
# Where the NVIDIA driver is, a GPU may be used. Without one (this machine, CPU-only nodes) Triton is told not to
# try pinned host memory or GPU metrics, which would only print a warning and an NVML/DCGM error at every start.
NVIDIA_DRIVER_DEVICE = Path("/dev/nvidiactl")
NO_GPU_ARGS = ("--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0")


class TritonUnavailable(RuntimeError):
    """The Triton server from the nvidia-pytriton wheel cannot be found, started, or did not become ready."""


def pytriton_root() -> Path:
    """`site-packages/pytriton/tritonserver` of the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable("nvidia-pytriton is not installed (pip install nvidia-pytriton==0.7.0)")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise TritonUnavailable(f"no tritonserver binary under {root}")
    return root


def tritonserver_binary() -> Path:
    return pytriton_root() / "bin" / "tritonserver"


def bundled_libs_dir() -> Path:
    """`site-packages/nvidia_pytriton.libs`: the server core's own shared libraries."""
    return pytriton_root().parents[1] / "nvidia_pytriton.libs"


def prepare_backend_dir(folder: Path) -> Path:
    """Make (or refresh) `<folder>/python/` with symlinks into the wheel; returns `folder`."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {name: root / "backends" / "python" / name for name in _BACKEND_FILES}
    sources[_STUB] = root / "python_backend_stubs" / version / _STUB
    for name, src in sources.items():
        if not src.exists():
            raise TritonUnavailable(f"the wheel has no {name} for Python {version} ({src})")
    target = Path(folder) / "python"
    private_dir(target)
    for name, src in sources.items():
        link = target / name
        if link.is_symlink() and os.readlink(link) == str(src):
            continue
        tmp = target / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(src)
        os.replace(tmp, link)  # atomic: a concurrently starting server never sees a missing file
    return Path(folder)


def prepare_repository_view(repository: Path, models: Sequence[str], folder: Path) -> Path:
    """`<folder>/<digest>/<model>` -> `<repository>/<model>` for each model; returns the view's folder.

    The digest names the (repository, models) pair, so concurrent starts share a view that never changes."""
    repository = Path(repository).resolve()
    if not models:
        raise TritonUnavailable("no model to serve")
    for model in models:
        if not (repository / model / "config.pbtxt").is_file() or "/" in model or model.startswith("."):
            raise TritonUnavailable(f"no model {model!r} in {repository}")
    digest = hashlib.sha256("\0".join([str(repository), *sorted(set(models))]).encode()).hexdigest()[:16]
    view = Path(folder) / digest
    private_dir(view)
    for model in sorted(set(models)):
        link, src = view / model, repository / model
        if link.is_symlink() and os.readlink(link) == str(src):
            continue
        tmp = view / f".{model}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(src, target_is_directory=True)
        os.replace(tmp, link)
    return view


def connect_host(address: str) -> str:
    """Where a local client reaches a server bound to `address` (every interface: loopback)."""
    return LOOPBACK if address in ("", "0.0.0.0") else address


def server_env(base: Mapping[str, str] | None = None, *, wheel: bool = True) -> dict[str, str]:
    """`wheel` False: for a tritonserver not from the wheel (NGC's), which brings its own libraries."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    bundled = str(bundled_libs_dir()) if wheel else ""
    ld = [p for p in (libdir, bundled, env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    bindir = str(Path(sys.executable).parent)  # the venv's bin (not resolved: the symlink marks the venv)
    env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
    return env


def server_command(
    view: Path,
    backend_dir: Path,
    *,
    grpc_port: int,
    metrics_port: int,
    address: str = LOOPBACK,
    log_verbose: int = 0,
    extra_args: Sequence[str] = (),
    gpu: bool | None = None,
    binary: Path | None = None,
) -> list[str]:
    """Serves every model of `view` (see `prepare_repository_view`) on `address`; `gpu` None: whether the NVIDIA
    driver is present. `binary`: another tritonserver (NGC's `/opt/tritonserver/bin/tritonserver`, with its own
    backends as `backend_dir`) in place of the wheel's; the flags are the same."""
    # Given to no client; local users who can read Triton's command line can see it (module docstring).
    restricted_key = secrets.token_urlsafe(32)
    cmd = [
        str(binary if binary is not None else tritonserver_binary()),
        f"--model-repository={Path(view).resolve()}",
        f"--backend-directory={Path(backend_dir).resolve()}",
        "--model-control-mode=none",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        f"--grpc-restricted-protocol={','.join(RESTRICTED_PROTOCOLS)}:{RESTRICTED_HEADER}={restricted_key}",
        "--allow-http=false",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        "--exit-timeout-secs=5",
        "--strict-readiness=true",
    ]
    if not (NVIDIA_DRIVER_DEVICE.exists() if gpu is None else gpu):
        cmd.extend(NO_GPU_ARGS)
    if log_verbose:
        cmd.append(f"--log-verbose={log_verbose}")
    cmd.extend(extra_args)
    return cmd


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """A `tritonserver` child process. Use `start_triton` to make one."""

    def __init__(
        self,
        process: subprocess.Popen,
        *,
        grpc_port: int,
        metrics_port: int,
        models: Sequence[str],
        log_path: Path | None,
        address: str = LOOPBACK,
    ) -> None:
        self.process = process
        self.address = address
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.models = tuple(models)
        self.log_path = log_path
        self.shm_locks: Path | None = None  # its launch's shared-memory lock folder (triton_launcher/shm.py)
        atexit.register(self.stop)

    @property
    def grpc_url(self) -> str:
        return f"{connect_host(self.address)}:{self.grpc_port}"

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float = 120.0) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while True:
                if self.process.poll() is not None:
                    raise TritonUnavailable(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if all(client.is_model_ready(m) for m in self.models):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                if time.monotonic() > deadline:
                    raise TritonUnavailable(f"models {self.models} not ready after {timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.25)
        finally:
            client.close()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status. Safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.shm_locks is not None:
            sweep_regions(self.shm_locks)
        atexit.unregister(self.stop)
        return self.process.returncode

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_triton(
    work_dir: Path,
    *,
    repository: Path = DEFAULT_REPOSITORY,
    models: Sequence[str] = DEFAULT_MODELS,
    env: Mapping[str, str] | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    address: str = LOOPBACK,
    ready_timeout: float = 180.0,
    log_verbose: int = 0,
) -> TritonServer:
    """Start tritonserver (backend dir, repository view and log under `work_dir`), wait until `models` are ready.

    `env`: the environment (default os.environ) before the PATH/LD_LIBRARY_PATH additions; put the
    FACEHARMONY_* settings the model needs there. Ports default to free ones. Raises TritonUnavailable."""
    work_dir = Path(work_dir)
    backend_dir = prepare_backend_dir(work_dir / "backends")
    view = prepare_repository_view(repository, models, work_dir / "repositories")
    ports = [p if p is not None else free_port(connect_host(address)) for p in (grpc_port, metrics_port)]
    sweep_regions(work_dir / "shm")  # what a SIGKILLed earlier launch left in /dev/shm
    lease = ShmLease(work_dir / "shm")
    cmd = server_command(
        view,
        backend_dir,
        grpc_port=ports[0],
        metrics_port=ports[1],
        address=address,
        log_verbose=log_verbose,
        extra_args=[lease.backend_arg],
    )
    log_path = work_dir / "tritonserver.log"
    try:
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                cmd,
                env=server_env(env),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=TRITON_UMASK,
                pass_fds=(lease.fd,),
            )
    finally:
        lease.handed_over()
    server = TritonServer(
        process, grpc_port=ports[0], metrics_port=ports[1], models=models, log_path=log_path, address=address
    )
    server.shm_locks = work_dir / "shm"
    try:
        server.wait_ready(ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server
