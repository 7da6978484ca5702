"""Generates the TypeScript and Go stubs other backends call the API with, into gen/ (ignored by git).

buf runs the plugins of `protos/buf.gen.ts.yaml` (protoc-gen-es, from npm) and `protos/buf.gen.go.yaml`
(protoc-gen-go and protoc-gen-go-grpc, from Debian: `make go-tools`) on the contract in protos/. A TypeScript
client also decodes messages that are not ours, and buf reads them from the Python packages the server uses:

- google/rpc/status.proto and error_details.proto (the Status in `grpc-status-details-bin`, its ErrorInfo):
  the .proto files that ship in googleapis-common-protos, copied alone into a temporary folder for buf (which
  would otherwise read every .proto in site-packages);
- grpc/health/v1/health.proto (health checking): grpcio-health-checking ships no .proto file, only the
  compiled descriptor in grpc_health.v1.health_pb2, which goes to buf as an image (a FileDescriptorSet) under
  the upstream path, with the JSON names protoc gives its fields.

Go needs neither: grpc-go (google.golang.org/grpc/health/grpc_health_v1, status) and genproto (errdetails)
ship them. The Go files land by go_package in go/faceharmony/v1/ (package faceharmonyv1, import path
github.com/faceharmony/backend/gen/go/faceharmony/v1), beside a go/go.mod for the module
github.com/faceharmony/backend/gen/go that requires the runtimes the code was generated for:
google.golang.org/protobuf at protoc-gen-go's own version and google.golang.org/grpc at the release the code
says it needs, or Debian's 1.33.3 (which the test builds against) if that is higher. A module-mode project
takes the module by a replace directive to gen/go; GOPATH mode ignores go.mod.

    python protos/stubs.py                            # TypeScript and Go into gen/ts and gen/go
    python protos/stubs.py --lang ts --output /tmp/g  # TypeScript only, into /tmp/g/ts
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
BUF = ROOT / "node_modules" / ".bin" / "buf"
TEMPLATES = {"ts": PROTO_ROOT / "buf.gen.ts.yaml", "go": PROTO_ROOT / "buf.gen.go.yaml"}
# What each language's plugins need besides buf, and what installs it.
PLUGINS = {
    "ts": ([ROOT / "node_modules" / ".bin" / "protoc-gen-es"], "make dev-tools"),
    "go": (["protoc-gen-go", "protoc-gen-go-grpc"], "make go-tools"),
}
GOOGLE_RPC = ("google/rpc/status.proto", "google/rpc/error_details.proto")
HEALTH_PATH = "grpc/health/v1/health.proto"
GO_MODULE = "github.com/faceharmony/backend/gen/go"
# The go directive of gen/go/go.mod: the Go that builds it here (Debian's).
GO_VERSION = "1.19"
# The least grpc-go gen/go/go.mod requires: Debian's, which the test builds against (Debian's protoc-gen-go-grpc
# 1.0 asserts grpc.SupportPackageIsVersion7, from 1.32). Newer plugins state theirs ("Requires gRPC-Go v1.64.0
# or later"), and a higher one wins.
GRPC_FLOOR = "v1.33.3"


def _json_name(field_name: str) -> str:
    """protoc's default JSON name: underscores dropped, the letter after each one upper-cased."""
    head, *rest = field_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def health_image(path: Path) -> None:
    """Writes grpc.health.v1's compiled descriptor (from grpcio-health-checking) as a buf image."""
    from google.protobuf import descriptor_pb2
    from grpc_health.v1 import health_pb2

    image = descriptor_pb2.FileDescriptorSet()
    file = image.file.add()
    health_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = HEALTH_PATH
    for message in file.message_type:
        for field in message.field:
            field.json_name = _json_name(field.name)
    path.write_bytes(image.SerializeToString())


def copy_google_rpc(root: Path) -> None:
    """Copies googleapis-common-protos's google/rpc/status.proto and error_details.proto under root, alone."""
    import google.rpc

    for folder in google.rpc.__path__:
        installed = Path(folder).parents[1]
        if all((installed / name).is_file() for name in GOOGLE_RPC):
            for name in GOOGLE_RPC:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(installed / name, root / name)
            return
    raise SystemExit("googleapis-common-protos ships no google/rpc/*.proto here: reinstall it")


def _plugin_version(plugin: str) -> str:
    """The version a protoc plugin reports (`protoc-gen-go --version`: "protoc-gen-go v1.28.1")."""
    done = subprocess.run([plugin, "--version"], capture_output=True, text=True, check=True)
    return "v" + done.stdout.split()[-1].removeprefix("v")


def _semver(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.removeprefix("v").split("."))


def go_mod(go_root: Path) -> str:
    """gen/go/go.mod: the module, and the protobuf and grpc-go releases its generated code needs."""
    stated = [
        match.group(1)
        for path in go_root.rglob("*_grpc.pb.go")
        for match in re.finditer(r"Requires gRPC-Go (v[0-9.]+) or later", path.read_text())
    ]
    grpc = max([GRPC_FLOOR, *stated], key=_semver)
    return (
        "// Generated by protos/stubs.py with the stubs beside it. DO NOT EDIT.\n"
        f"module {GO_MODULE}\n\ngo {GO_VERSION}\n\nrequire (\n"
        f"\tgoogle.golang.org/grpc {grpc}\n"
        f"\tgoogle.golang.org/protobuf {_plugin_version('protoc-gen-go')}\n)\n"
    )


def _buf_generate(source: Path, template: Path, output: Path) -> None:
    command = [str(BUF), "generate", str(source), "--template", str(template), "--output", str(output)]
    subprocess.run(command, cwd=ROOT, check=True)


def _check_plugins(language: str) -> None:
    plugins, installer = PLUGINS[language]
    missing = [str(p) for p in plugins if shutil.which(str(p)) is None]
    if not BUF.exists():
        missing.insert(0, str(BUF))
    if missing:
        raise SystemExit(f"{language} stubs need {', '.join(missing)}: run `{installer}`")


def generate(languages: list[str], output: Path) -> list[Path]:
    """Generates the stubs of each language into output/<language>/, emptied first; returns the files made."""
    for language in languages:
        _check_plugins(language)
    made: list[Path] = []
    for language in languages:
        target = output / language
        shutil.rmtree(target, ignore_errors=True)
        _buf_generate(PROTO_ROOT, TEMPLATES[language], output)
        if language == "ts":
            with tempfile.TemporaryDirectory() as tmp:
                google_rpc, image = Path(tmp) / "google-rpc", Path(tmp) / "health.binpb"
                copy_google_rpc(google_rpc)
                _buf_generate(google_rpc, TEMPLATES[language], output)
                health_image(image)
                _buf_generate(image, TEMPLATES[language], output)
        if language == "go":
            (target / "go.mod").write_text(go_mod(target))
        made += sorted(p for p in target.rglob("*") if p.is_file())
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", action="append", choices=sorted(TEMPLATES), help="a language (default: all)")
    parser.add_argument("--output", type=Path, default=ROOT / "gen", help="the folder to write into (default: gen/)")
    args = parser.parse_args(argv)
    output = args.output.resolve()
    made = generate(args.lang or sorted(TEMPLATES), output)
    print(f"generated {len(made)} files in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
