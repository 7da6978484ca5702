"""The compose stacks (docker/compose.yaml, docker/compose.production.yaml): static checks that run anywhere, and
the whole user flow through the local stack.

The static checks read both files: every command is one of our console scripts (or a stand-in's program), every
FACEHARMONY_* variable is a setting, every *_FILE setting names a secret the service mounts, each process gets only
the secrets it needs, only the API server is published and only on loopback, Triton's model has no database, and the
production variant reserves a GPU for the trainer and Triton and runs no stand-in.

`test_the_whole_flow_through_the_stack` brings the local CPU stack up with podman-compose
(docker/compose-stack.sh), signs a person up through the SMTP catcher's mail, uploads photos, trains a model,
orders and downloads a portrait over the published API port, checks every container's health command and user,
then tears the stack down with its volumes. Many minutes, so it runs only when selected (`make compose-test`,
`pytest -m compose`).
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

from faceharmony.core.settings import FILE_SETTINGS, FILE_SUFFIX, PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "docker" / "compose.yaml"
PRODUCTION = ROOT / "docker" / "compose.production.yaml"
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
# The stand-ins' programs (docker/dev/) and the one-shot base-model's shell.
OTHER_PROGRAMS = {"gcp-storage-emulator", "python", "sh", "pg_isready"}
OURS = {"base-model", "migrate", "api", "trainer", "triton", "triton-0", "triton-1", "order-worker", "retention"}
# The Triton replicas of each file (the local stack runs two; production, one per GPU machine).
TRITONS = {LOCAL: ["triton-0", "triton-1"], PRODUCTION: ["triton"]}
PROCESSES = ("api", "trainer", "order-worker", "retention")
SETTINGS = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)} | {
    PREFIX + (name + FILE_SUFFIX).upper() for name in FILE_SETTINGS
}


def services(path: Path) -> dict[str, dict]:
    return yaml.safe_load(path.read_text())["services"]


@pytest.mark.parametrize("path", [LOCAL, PRODUCTION], ids=["local", "production"])
def test_every_command_is_a_console_script_or_a_stand_ins_program(path):
    for name, service in services(path).items():
        command = service.get("command")
        if command is None:
            assert name in ("postgres", "triton"), f"{name} runs its image's default command"
            continue
        if name == "prometheus":
            assert command[0].startswith("--config.file="), command
            continue
        assert command[0] in SCRIPTS | OTHER_PROGRAMS, (name, command)
        if command[0] == "sh":
            assert "faceharmony-admin build-tiny-base" in command[-1]
        for test in [service.get("healthcheck", {}).get("test", ["CMD", "faceharmony-server"])]:
            assert test[0] == "CMD" and test[1] in SCRIPTS | OTHER_PROGRAMS, (name, test)


@pytest.mark.parametrize("path", [LOCAL, PRODUCTION], ids=["local", "production"])
def test_every_faceharmony_variable_is_a_setting_and_every_file_a_mounted_secret(path):
    for name, service in services(path).items():
        env = service.get("environment", {})
        for variable, value in env.items():
            if variable.startswith(PREFIX):
                assert variable in SETTINGS, (name, variable)
            if variable.endswith("_FILE") and variable.startswith(PREFIX):
                secret = Path(value).name
                assert value == f"/run/secrets/{secret}" and secret in service.get("secrets", []), (name, variable)
        if name in OURS:
            assert env.get("FACEHARMONY_DATA_DIR") == "/var/lib/faceharmony", name


@pytest.mark.parametrize("path", [LOCAL, PRODUCTION], ids=["local", "production"])
def test_each_process_gets_only_the_secrets_it_needs(path):
    svc = services(path)
    for name in OURS & set(svc):
        secrets = set(svc[name].get("secrets", []))
        env = svc[name].get("environment", {})
        # The server secret keys email HMACs and token hashes: the API server's and migrate's only.
        assert ("secret_key" in secrets) == (name in ("api", "migrate")), name
        assert "smtp_password" not in secrets or name in ("api", "migrate"), name
        # Triton's model reads adapters and keys; it never opens the database.
        assert ("database_url" in secrets) == (name not in (*TRITONS[path], "base-model")), name
        assert "FACEHARMONY_DATABASE_URL_FILE" not in env or "database_url" in secrets, name


@pytest.mark.parametrize("path", [LOCAL, PRODUCTION], ids=["local", "production"])
def test_only_the_api_is_published_and_on_loopback(path):
    for name, service in services(path).items():
        ports = service.get("ports", [])
        if name in ("api", "prometheus"):  # Prometheus: its UI, only with the `monitoring` profile
            assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)
        else:
            assert not ports, name
    env = services(path)["api"]["environment"]
    assert env["FACEHARMONY_LISTEN"] == "0.0.0.0:50051"  # inside its container only


def test_migrations_run_once_before_the_processes():
    for path in (LOCAL, PRODUCTION):
        svc = services(path)
        assert svc["migrate"]["command"] == ["faceharmony-admin", "migrate"]
        for name in (*PROCESSES, *TRITONS[path]):
            if name == "triton":  # production's Triton, as before: its start-up is checked with its GPU below
                continue
            assert svc[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
            env = svc[name]["environment"]
            assert env.get("FACEHARMONY_AUTO_MIGRATE", "false") == "false", name


def test_production_reserves_gpus_and_runs_no_stand_in():
    svc = services(PRODUCTION)
    assert not {"postgres", "gcs", "smtp", "base-model"} & set(svc)
    for name in ("trainer", "triton"):
        (device,) = svc[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    for name in OURS & set(svc):
        env = svc[name]["environment"]
        assert "FACEHARMONY_GCS_ENDPOINT" not in env and env["FACEHARMONY_KEK_PROVIDER"] == "gcp-kms", name
        assert svc[name]["read_only"] is True and svc[name]["cap_drop"] == ["ALL"], name
        # One Google service account per storage role (ARCHITECTURE.md), by key file here.
        role = {"api": "fh-api", "trainer": "fh-trainer", "triton": "fh-orders", "order-worker": "fh-orders"}
        role |= {"retention": "fh-retention", "migrate": "fh-migration"}
        assert env["GOOGLE_APPLICATION_CREDENTIALS"] == f"/run/secrets/gcp-{role[name]}.json", name


@pytest.mark.parametrize("path", [LOCAL, PRODUCTION], ids=["local", "production"])
def test_every_process_serves_metrics_on_the_network_and_order_workers_know_every_replica(path):
    svc = services(path)
    for name in PROCESSES:
        env = svc[name]["environment"]
        assert env["FACEHARMONY_METRICS_PORT"] == "9464" and env["FACEHARMONY_METRICS_ADDRESS"] == "0.0.0.0", name
        assert not svc[name].get("ports") or name == "api", name  # reached on the project's network only
    replicas = [f"{name}:8001" for name in TRITONS[path]]
    env = svc["order-worker"]["environment"]
    assert env.get("FACEHARMONY_TRITON_REPLICAS", env["FACEHARMONY_TRITON_URL"]).split(",") == replicas
    assert env["FACEHARMONY_TRITON_URL"] == replicas[0]
    for name in TRITONS[path]:
        command = svc[name].get("command", [])
        assert "--metrics-port" not in command or command[command.index("--metrics-port") + 1] == "8002", name
    assert len(TRITONS[LOCAL]) > 1


def test_the_compose_prometheus_scrapes_every_process_and_replica_with_the_alert_rules():
    config = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: [t for c in j["static_configs"] for t in c["targets"]] for j in config["scrape_configs"]}
    assert jobs == {f"faceharmony-{name}": [f"{name}:9464"] for name in PROCESSES} | {
        "faceharmony-triton": [f"{name}:8002" for name in TRITONS[LOCAL]]
    }
    assert config["rule_files"] == ["alerts.yml"]
    prometheus = services(LOCAL)["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in prometheus["volumes"] if m.startswith("../")}
    assert mounts == {
        "/etc/prometheus/prometheus.yml": "../deploy/monitoring/prometheus.yml",
        "/etc/prometheus/alerts.yml": "../deploy/monitoring/alerts.yml",
    }
    for source in mounts.values():
        assert (LOCAL.parent / source).is_file(), source


def test_the_stack_script_is_what_the_makefile_and_compose_file_name():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("compose-up", "compose-down", "compose-test"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "compose-stack.sh" in makefile
    assert "docker/.secrets/" in (ROOT / ".gitignore").read_text()


# ---- the whole flow through the local stack (make compose-test)

CODE = re.compile(r"code is: (\d{6})")
# Run with `python -c` inside a container: prints the body of the URL it is given (the images have no curl).
SCRAPE = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


def _sample(exposition: str, name: str, **labels: str) -> float:
    """The sum of a series' samples with these labels in a Prometheus text exposition (0 when it has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for f in text_string_to_metric_families(exposition)
        for s in f.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def _compose_ready() -> str | None:
    compose = os.environ.get("PODMAN_COMPOSE") or shutil.which("podman-compose")
    if not compose or shutil.which("podman") is None:
        return 'podman and podman-compose are needed (here: eval "$(bash ../shared/tools/podman-setup.sh)")'
    for image in (
        "localhost/faceharmony:dev",
        "localhost/faceharmony-triton-cpu:dev",
        "localhost/faceharmony-postgres:dev",
    ):
        if subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode != 0:
            return f"image {image} is absent: make images"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.project = "fhtest" + uuid.uuid4().hex[:6]
        self.port = _free_port()
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "FACEHARMONY_COMPOSE_API_PORT": str(self.port),
            "FACEHARMONY_COMPOSE_SECRETS": str(tmp / "secrets"),
            "STACK_TIMEOUT": "400",
        }

    def script(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(ROOT / "docker" / "compose-stack.sh"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def exec(self, service: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.script("exec", service, *cmd, check=False, timeout=120)

    def containers(self) -> list[str]:
        out = subprocess.run(
            [
                "podman",
                "ps",
                "-a",
                "--filter",
                f"label=io.podman.compose.project={self.project}",
                "--format",
                "{{.Names}}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.split()

    def volumes(self) -> list[str]:
        out = subprocess.run(["podman", "volume", "ls", "--format", "{{.Name}}"], capture_output=True, text=True).stdout
        return [v for v in out.split() if v.startswith(self.project + "_")]

    def maildir(self) -> Path:
        out = subprocess.run(
            ["podman", "volume", "inspect", f"{self.project}_mail", "--format", "{{.Mountpoint}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return Path(out) / "maildir" / "new"

    def code_for(self, client, address: str, timeout: float = 60) -> str:
        since = time.time() - 1
        client.accounts.request_sign_in_code(address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            folder = self.maildir()
            for path in sorted(folder.glob("*") if folder.is_dir() else [], key=lambda p: p.stat().st_mtime):
                if path.stat().st_mtime < since:
                    continue
                message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                body = message.get_body(preferencelist=("plain",))
                found = CODE.search(body.get_content() if body else "")
                if message["To"] == address and found:
                    return found.group(1)
            time.sleep(0.5)
        raise AssertionError(f"no sign-in code for {address} reached the SMTP catcher within {timeout} s")


@pytest.mark.compose
@pytest.mark.timeout(1800)
def test_the_whole_flow_through_the_stack(request, tmp_path):
    if "compose" not in (request.config.option.markexpr or ""):
        pytest.skip("brings the whole stack up for many minutes: select it with -m compose (make compose-test)")
    why = _compose_ready()
    if why:
        pytest.skip(why)
    from PIL import Image

    from faceharmony.clients.samples import people
    from faceharmony.clients.sdk import Client
    from faceharmony.v1 import admin_pb2, model_pb2, order_pb2

    stack = Stack(tmp_path)
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        up = stack.script("up", check=False)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        timings["up"] = time.monotonic() - started
        target = f"127.0.0.1:{stack.port}"

        # Staff, made with the operator's command inside the API server's container.
        staff_address, address = f"staff-{stack.project}@example.com", f"user-{stack.project}@example.com"
        made = stack.exec("api", "faceharmony-admin", "create-staff", staff_address, "Staff", "--role", "support")
        assert made.returncode == 0, made.stderr
        staff, user = Client(target), Client(target)
        staff.accounts.sign_in(staff_address, stack.code_for(staff, staff_address))
        user.accounts.join_waitlist("Compose User", address, is_16_or_older=True)
        (entry,) = [
            e for e in staff.admin.list_waitlist(state=admin_pb2.WAITLIST_ENTRY_STATE_PENDING) if e.email == address
        ]
        staff.admin.approve_waitlist_entry(entry.id)
        user.accounts.sign_in(address, stack.code_for(user, address))
        timings["signed up"] = time.monotonic() - started

        person = people(photos=4)[0]
        photo_ids = [user.photos.upload_photo(s.content, filename=s.name).id for s in person.accepted[:4]]
        model = user.models.create_model("Compose", photo_ids)
        for event in user.models.watch_model(model.id, timeout=900):
            state = event.state
        assert state == model_pb2.MODEL_STATE_READY, user.models.get_model(model.id).failure_reason
        timings["trained"] = time.monotonic() - started

        placed = user.orders.create_order([model.id], user.orders.list_styles()[0].id, 1)
        for event in user.orders.watch_order(placed.id, timeout=600):
            order_state = event.order.state
        assert order_state == order_pb2.ORDER_STATE_COMPLETED
        (photo,) = user.orders.list_generated_photos(order_id=placed.id)
        image = Image.open(io.BytesIO(user.orders.download(photo.id)))
        assert image.format == "PNG" and image.size == (photo.width, photo.height)
        timings["downloaded"] = time.monotonic() - started

        # Every process runs as the images' user and its health command says healthy.
        for service, health in {
            "api": ["faceharmony-server", "--healthcheck"],
            "trainer": ["faceharmony-trainer", "--healthcheck"],
            "order-worker": ["faceharmony-order-worker", "--healthcheck", "--ready"],
            "retention": ["faceharmony-retention", "--healthcheck"],
            "triton-0": ["faceharmony-triton", "--healthcheck", "--grpc-port", "8001"],
            "triton-1": ["faceharmony-triton", "--healthcheck", "--grpc-port", "8001"],
        }.items():
            assert stack.exec(service, "id", "-u").stdout.strip() == "10001", service
            result = stack.exec(service, *health)
            assert result.returncode == 0, (service, result.stdout, result.stderr)
        # Every process's /metrics, read inside its container (what the `prometheus` service scrapes): the flow
        # above shows in them, and the model's adapter was fetched by one replica only (rendezvous routing).
        scraped = {
            service: stack.exec(service, "python", "-c", SCRAPE, f"http://127.0.0.1:{port}/metrics").stdout
            for service, port in {
                "api": 9464,
                "trainer": 9464,
                "order-worker": 9464,
                "retention": 9464,
                "triton-0": 8002,
                "triton-1": 8002,
            }.items()
        }
        handled = "faceharmony_grpc_server_handled_total"
        assert _sample(scraped["api"], handled, grpc_method="CreateOrder", grpc_code="OK") == 1
        assert _sample(scraped["trainer"], "faceharmony_training_jobs_total", outcome="succeeded") == 1
        assert _sample(scraped["order-worker"], "faceharmony_images_total", outcome="made") == 1
        assert _sample(scraped["retention"], "faceharmony_retention_last_run_timestamp_seconds") > 0
        fetches = [_sample(scraped[r], "faceharmony_adapter_cache_fetches_total") for r in ("triton-0", "triton-1")]
        assert sorted(fetches) == [0, 1], fetches
        # Nothing but the API is reachable from the host.
        ports = subprocess.run(["podman", "ps", "--format", "{{.Names}} {{.Ports}}"], capture_output=True, text=True)
        published = [line for line in ports.stdout.splitlines() if line.startswith(stack.project) and "->" in line]
        assert len(published) == 1 and f"127.0.0.1:{stack.port}->50051" in published[0], published
        # A container with a wrong setting or an unreachable dependency says so in one line and exits 2.
        for env, command, reason in [
            ({"FACEHARMONY_LISTN": "x"}, ["faceharmony-server"], "unknown settings: FACEHARMONY_LISTN"),
            (
                {"FACEHARMONY_DATABASE_URL": "postgresql://faceharmony:pw@postgres:1/faceharmony"},
                ["faceharmony-trainer"],
                "DATABASE_UNREACHABLE",
            ),
            (
                {"FACEHARMONY_TRITON_URL": "triton:1", "FACEHARMONY_TRITON_WAIT_SECONDS": "0"},
                ["faceharmony-order-worker"],
                "TRITON_UNAVAILABLE",
            ),
        ]:
            storage = {
                "FACEHARMONY_BLOB_BACKEND": "gcs",
                "FACEHARMONY_GCS_BUCKET": "faceharmony-blobs",
                "FACEHARMONY_GCS_PROJECT": "faceharmony-local",
                "FACEHARMONY_GCS_ENDPOINT": "http://gcs:9023",
                "FACEHARMONY_DATABASE_URL_FILE": "/run/secrets/database_url",
            }
            if "FACEHARMONY_DATABASE_URL" in env:
                del storage["FACEHARMONY_DATABASE_URL_FILE"]
            secrets = stack.env["FACEHARMONY_COMPOSE_SECRETS"]
            run = subprocess.run(
                ["podman", "run", "--rm", "--network", f"{stack.project}_default"]
                + ["-v", f"{stack.project}_keys:/var/lib/faceharmony/keys"]
                + ["-v", f"{secrets}/database_url:/run/secrets/database_url:ro"]
                + [a for k, v in {**storage, **env}.items() for a in ("-e", f"{k}={v}")]
                + ["--no-healthcheck", "localhost/faceharmony:dev", *command],
                capture_output=True,
                text=True,
                timeout=180,
            )
            # podman's own complaints (no systemd here to run health-check timers) are not the container's output.
            lines = [line for line in run.stderr.strip().splitlines() if not line.startswith('time="')]
            assert run.returncode == 2 and len(lines) == 1 and reason in lines[0], (command, run.stderr[-2000:])
            assert "Traceback" not in run.stderr and "pw@" not in run.stderr
        user.accounts.delete_account(address)
        staff.close()
        user.close()
    finally:
        down = stack.script("clean", check=False, timeout=300)
        timings["down"] = time.monotonic() - started
        print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
    assert down.returncode == 0, down.stderr[-2000:]
    assert stack.containers() == [] and stack.volumes() == []
