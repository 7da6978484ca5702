"""The container images (docker/): static checks that run anywhere, and one that builds and runs the app image.

The static checks read the Dockerfiles: every entry point they name is a console script of pyproject.toml,
every path they COPY exists, every FACEHARMONY_* variable is a setting, the final user is not root, and each
image has a HEALTHCHECK. docker/constraints.txt (tools/image_constraints.py) must satisfy pyproject.toml's ranges.

`test_the_app_image_runs` builds localhost/faceharmony:dev with podman and runs it: minutes, so it runs only when
selected (`make image-test`, `pytest -m images`), and skips with the reason when podman or the base image is absent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from faceharmony.core.settings import FILE_SETTINGS, FILE_SUFFIX, PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "docker/Dockerfile": ["app", "triton-cpu"],
    "docker/Dockerfile.triton": ["triton"],
    "docker/dev/postgres.Dockerfile": [None],
    "docker/dev/emulators.Dockerfile": [None],
}
# The dev-only images run other projects' programs, not ours.
HEALTHCHECKED = {"docker/Dockerfile", "docker/Dockerfile.triton", "docker/dev/postgres.Dockerfile"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, out, current = (ROOT / path).read_text().splitlines(), [], ""
    for line in lines:
        if line.lstrip().startswith("#") and not current:
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(path: str) -> dict[str | None, list[tuple[str, str]]]:
    """Instructions per stage name (None for an unnamed last stage)."""
    result: dict[str | None, list[tuple[str, str]]] = {}
    name: str | None = None
    for word, rest in instructions(path):
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result[name] = []
            if name in result and parts and parts[0] in result:  # FROM an earlier stage: inherits it
                result[name] = list(result[parts[0]])
        if name in result:
            result[name].append((word, rest))
    return result


def exec_form(rest: str) -> list[str]:
    """The JSON array of a CMD/ENTRYPOINT/HEALTHCHECK CMD."""
    return json.loads(rest[rest.index("[") :])


def named_commands(path: str) -> list[list[str]]:
    cmds = []
    for word, rest in instructions(path):
        if word in ("CMD", "ENTRYPOINT"):
            cmds.append(exec_form(rest))
        elif word == "HEALTHCHECK" and "CMD" in rest:
            cmds.append(exec_form(rest))
    return cmds


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_every_entry_point_named_is_a_console_script(path):
    scripts = set(PYPROJECT["project"]["scripts"])
    ours = [cmd[0] for cmd in named_commands(path) if cmd[0].startswith("faceharmony")]
    assert all(name in scripts for name in ours), (ours, scripts)
    if path in ("docker/Dockerfile", "docker/Dockerfile.triton"):
        assert ours, "the image names no faceharmony entry point"


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_every_path_copied_or_mounted_from_the_context_exists(path):
    sources = []
    for word, rest in instructions(path):
        args = rest.split()
        if word in ("COPY", "ADD") and not any(a.startswith("--from=") for a in args):
            sources += [a for a in args if not a.startswith("--")][:-1]
        for mount in re.findall(r"--mount=(\S+)", rest):
            opts = dict(kv.split("=", 1) for kv in mount.split(",") if "=" in kv)
            if "from" not in opts and "source" in opts:
                sources.append(opts["source"])
    for source in sources:
        assert (ROOT / source).exists(), f"{path} copies {source}, which does not exist"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for source in sources:
        assert source.rstrip("/").split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


def test_the_dockerignore_keeps_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "node_modules", "gen"} <= ignored


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_every_faceharmony_variable_named_is_a_setting(path):
    known = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    known |= {PREFIX + (name + FILE_SUFFIX).upper() for name in FILE_SETTINGS}
    named = set(re.findall(r"FACEHARMONY_[A-Z0-9_]+", (ROOT / path).read_text()))
    assert named <= known, named - known


@pytest.mark.parametrize("path, stage", [(p, s) for p, names in sorted(DOCKERFILES.items()) for s in names])
def test_each_image_runs_as_a_non_root_user_under_tini(path, stage):
    body = stages(path)[stage]
    users = [rest for word, rest in body if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    if path.startswith("docker/Dockerfile"):
        assert users[-1] == "10001:10001"
    entry = [exec_form(rest) for word, rest in body if word == "ENTRYPOINT"]
    assert entry and entry[-1] == ["tini", "--"]


@pytest.mark.parametrize("path, stage", [(p, s) for p, names in sorted(DOCKERFILES.items()) for s in names])
def test_each_served_image_has_a_healthcheck(path, stage):
    if path not in HEALTHCHECKED:
        pytest.skip(f"{path} runs other projects' programs (the compose file checks them)")
    checks = [exec_form(rest) for word, rest in stages(path)[stage] if word == "HEALTHCHECK"]
    assert checks, f"{path} ({stage}) has no HEALTHCHECK"
    if checks[-1][0].startswith("faceharmony"):
        assert "--healthcheck" in checks[-1]


def test_the_base_images_are_build_arguments_with_pinned_defaults():
    for path in DOCKERFILES:
        text = (ROOT / path).read_text()
        args = dict(re.findall(r"^ARG (BASE_IMAGE|TRITON_IMAGE)=(\S+)$", text, re.M))
        assert args, f"{path}: no base image argument"
        for image in args.values():
            assert ":" in image and not image.endswith(":latest") and re.search(r"\d", image.rsplit(":", 1)[1])
        assert re.search(r"^FROM \$\{(BASE_IMAGE|TRITON_IMAGE)\}", text, re.M)


def test_every_package_folder_is_in_pyproject():
    """An editable install finds any subpackage through package-dir; the images' real install only the listed ones."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            sub = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((package, *sub)) in listed, f"{init.parent} is not in pyproject.toml's packages"


def test_the_constraints_satisfy_pyprojects_ranges():
    pins = {}
    for line in (ROOT / "docker/constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    extras = PYPROJECT["project"]["optional-dependencies"]
    for text in [*PYPROJECT["project"]["dependencies"], *extras["triton"], *extras["triton-client"]]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "torch":  # per base image (TORCH_SPEC), never pinned here
            assert name not in pins
            continue
        assert name in pins, f"{name} is not pinned in docker/constraints.txt (run tools/image_constraints.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"


# ---- podman: build and run the app image (make image-test)

IMAGE = "localhost/faceharmony:dev"


def _podman_ready() -> str | None:
    """Why the image test cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed"
    base = os.environ.get("BASE_IMAGE", "debian:bookworm-20251117-slim")
    if subprocess.run(["podman", "image", "exists", base], capture_output=True).returncode != 0:
        return f'base image {base} is absent (here: eval "$(bash ../shared/tools/podman-setup.sh)")'
    return None


def _grpc_health(port: int) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.mark.images
def test_the_app_image_runs(request, tmp_path):
    if "images" not in (request.config.option.markexpr or ""):
        pytest.skip("builds and runs images for minutes: select it with -m images (make image-test)")
    reason = _podman_ready()
    if reason:
        pytest.skip(reason)
    subprocess.run([str(ROOT / "docker/build-images.sh"), "app"], check=True, timeout=1800)
    name = f"fh-image-test-{os.getpid()}"
    from faceharmony.triton_launcher.server import free_port

    port = free_port()
    subprocess.run(
        ["podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:50051", IMAGE], check=True, timeout=120
    )
    try:
        status, deadline = "", time.monotonic() + 180
        while status != "SERVING":
            if time.monotonic() > deadline:
                logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True).stdout
                pytest.fail(f"the server in {IMAGE} did not answer gRPC health:\n{logs[-3000:]}")
            try:
                status = _grpc_health(port)
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(1)

        def sh(*cmd: str) -> str:
            return subprocess.run(
                ["podman", "exec", name, *cmd], check=True, capture_output=True, text=True, timeout=60
            ).stdout.strip()

        assert sh("faceharmony-server", "--healthcheck") is not None  # exit 0 (check=True)
        assert sh("id", "-u") == "10001"
        assert sh("stat", "-c", "%u %a", "/var/lib/faceharmony") == "10001 700"
        modes = sh("find", "/var/lib/faceharmony", "-mindepth", "1", "-printf", "%y %m %p\n").splitlines()
        assert modes
        for line in modes:
            kind, mode, path = line.split(" ", 2)
            assert (kind, mode) in (("f", "600"), ("d", "700")), line
        subprocess.run(["podman", "stop", "-t", "30", name], check=True, capture_output=True, timeout=120)
        state = json.loads(
            subprocess.run(["podman", "inspect", name], check=True, capture_output=True, text=True).stdout
        )[0]["State"]
        # SIGTERM reached the server through tini and it exited by itself: not the SIGKILL after the timeout (137).
        assert state["ExitCode"] == 0, state
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
