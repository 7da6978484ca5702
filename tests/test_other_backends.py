"""Other backends' view of the API: the stubs `make stubs` generates (protos/stubs.py) and the example clients on them.

Each test builds a copy of the repository's layout in a temporary folder (the client's sources, the stubs generated
there with buf, node_modules linked), compiles it, runs the client against a real server on loopback and checks what
it printed and what reached the database:

- TypeScript: protoc-gen-es stubs (with google.rpc's Status and ErrorInfo and grpc.health.v1 besides ours) compiled
  with `tsc` under strict options, and clients/typescript/client.ts run by Node on Connect-ES's gRPC transport;
- Go: protoc-gen-go and protoc-gen-go-grpc stubs, with the gen/go/go.mod a module-mode project takes them by
  (read by `go mod edit`), and clients/go vetted and built offline against Debian's Go libraries (GOPATH mode
  over /usr/share/gocode, which ignores go.mod: no module proxy), then the client run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faceharmony.core.db.models import WaitlistEntry

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[1]
NODE_BIN = ROOT / "node_modules" / ".bin"
GOCODE = Path("/usr/share/gocode")
# Where the stubs' go_package puts the repository in a GOPATH.
GO_IMPORT_ROOT = Path("src/github.com/faceharmony/backend")

# What both clients print: the server healthy, the entry made, the signed-in account read with its bearer token,
# and each failing call's gRPC code with the ErrorInfo reason decoded from grpc-status-details-bin.
EXPECTED = {
    "health": "SERVING",
    "joined": True,
    "account": {"state": "ACTIVE"},
    "failures": [
        {"call": "JoinWaitlist", "code": "INVALID_ARGUMENT", "reason": "AGE_ATTESTATION_REQUIRED"},
        {"call": "GetAccount", "code": "UNAUTHENTICATED", "reason": "UNAUTHENTICATED"},
    ],
}


def unavailable(what: str, installer: str):
    """A missing tool: a failure in CI (where `make install` provides it), a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI: `{installer}`")
    pytest.skip(f"{what} not installed; run `{installer}`")


def require(tool: str, installer: str) -> str:
    """The tool's path, found on PATH (or given whole)."""
    return shutil.which(tool) or unavailable(tool, installer)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, **kwargs)
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done


def generate_stubs(language: str, output: Path) -> list[Path]:
    run([sys.executable, str(ROOT / "protos" / "stubs.py"), "--lang", language, "--output", str(output)])
    return sorted(p.relative_to(output) for p in output.rglob("*") if p.is_file())


def go_mod(go: str, path: Path) -> dict:
    """A go.mod as the go command parses it (`go mod edit -json`, offline)."""
    return json.loads(run([go, "mod", "edit", "-json", str(path)]).stdout)


def client_outcome(h, command: list[str], email: str) -> dict:
    """Runs a client against the harness's server as a signed-in user's backend; returns its JSON line."""
    user = h.sign_up("signed-in@example.com")
    done = run([*command, f"127.0.0.1:{h.port}", email], env={**os.environ, "FACEHARMONY_TOKEN": user.token})
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    assert user.token not in done.stdout + done.stderr
    return json.loads(lines[0])


def assert_joined(h, email: str, name: str) -> None:
    """Exactly one waiting-list entry for the email, with the client's name and attestation."""

    def entries():
        return list(WaitlistEntry.select().where(WaitlistEntry.email_hmac == h.email_hmac(email)))

    found = h.db_call(entries)
    assert [(e.name, e.is_16_or_older) for e in found] == [(name, True)]


def test_a_node_backend_calls_the_api_with_the_typescript_stubs(sqlite_harness, tmp_path):
    tsc = require(str(NODE_BIN / "tsc"), "make dev-tools")
    node = require("node", "apt-get install nodejs")
    tree = tmp_path / "repo"
    shutil.copytree(ROOT / "clients" / "typescript", tree / "clients" / "typescript")
    (tree / "node_modules").symlink_to(ROOT / "node_modules")

    made = generate_stubs("ts", tree / "gen")
    for name in ("account", "admin", "errors", "model", "options", "order", "photo", "purchase", "support"):
        assert Path(f"ts/faceharmony/v1/{name}_pb.ts") in made
    for extra in ("google/rpc/status_pb.ts", "google/rpc/error_details_pb.ts", "grpc/health/v1/health_pb.ts"):
        assert Path("ts", extra) in made

    run([tsc, "-p", str(tree / "clients" / "typescript")])
    script = tree / "build" / "typescript" / "clients" / "typescript" / "client.js"
    outcome = client_outcome(sqlite_harness, [node, str(script)], "node-backend@example.com")
    assert outcome == EXPECTED
    assert_joined(sqlite_harness, "node-backend@example.com", "Node Backend")


def test_a_go_backend_calls_the_api_with_the_go_stubs(sqlite_harness, tmp_path):
    go = require("go", "make go-tools")
    if not (GOCODE / "src" / "google.golang.org" / "grpc").is_dir():
        unavailable("Debian's Go gRPC library", "make go-tools")
    gopath = tmp_path / "gopath"
    tree = gopath / GO_IMPORT_ROOT
    shutil.copytree(ROOT / "clients" / "go", tree / "clients" / "go")

    made = generate_stubs("go", tree / "gen")
    assert Path("go/faceharmony/v1/account.pb.go") in made
    assert Path("go/faceharmony/v1/account_grpc.pb.go") in made
    assert Path("go/faceharmony/v1/errors.pb.go") in made
    # The module's go.mod, and the example's replace to it, as Go reads them.
    stubs_mod = go_mod(go, tree / "gen" / "go" / "go.mod")
    assert stubs_mod["Module"]["Path"] == "github.com/faceharmony/backend/gen/go"
    requires = {r["Path"]: r["Version"] for r in stubs_mod["Require"]}
    protoc_gen_go = run([require("protoc-gen-go", "make go-tools"), "--version"]).stdout.split()[-1]
    assert requires == {"google.golang.org/protobuf": protoc_gen_go, "google.golang.org/grpc": "v1.33.3"}
    client_mod = go_mod(go, tree / "clients" / "go" / "go.mod")
    [replace] = client_mod["Replace"]
    assert replace["Old"]["Path"] == stubs_mod["Module"]["Path"]
    assert (tree / "clients" / "go" / replace["New"]["Path"]).resolve() == tree / "gen" / "go"

    # Offline: Debian's packaged modules in GOPATH mode; nothing is fetched.
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{gopath}:{GOCODE}", "GOPROXY": "off", "GOFLAGS": ""}
    run([go, "vet", "./gen/go/...", "./clients/go"], cwd=tree, env=env)
    binary = tmp_path / "go-client"
    run([go, "build", "-o", str(binary), "./clients/go"], cwd=tree, env=env)
    outcome = client_outcome(sqlite_harness, [str(binary)], "go-backend@example.com")
    assert outcome == EXPECTED
    assert_joined(sqlite_harness, "go-backend@example.com", "Go Backend")
