"""Generates the Python code of the API contract (faceharmony.v1) from protos/.

One script makes every generated file: `_pb2.py`, `_pb2.pyi` and
`_pb2_grpc.py` beside each `.proto` under `protos/faceharmony/v1/`, which is
the `faceharmony.v1` package. The generator is pinned (grpcio-tools, see
pyproject.toml) so the output is reproducible.

    python protos/generate.py           # regenerate in place
    python protos/generate.py --check   # exit 1 if regenerating would change anything
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "faceharmony" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
EXPECTED_GRPC_TOOLS = "1.81.1"


def _protoc(out_dir: Path) -> None:
    from grpc_tools import protoc  # imported here: a dev-only dependency

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _generated(directory: Path) -> dict[str, Path]:
    return {p.name: p for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; change nothing")
    args = parser.parse_args(argv)

    from importlib.metadata import version

    found = version("grpcio-tools")
    if found != EXPECTED_GRPC_TOOLS:
        print(f"grpcio-tools {EXPECTED_GRPC_TOOLS} required, found {found}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _protoc(out)
        fresh = _generated(out / "faceharmony" / "v1")
        current = _generated(PACKAGE_DIR)
        stale = sorted(
            name
            for name in fresh.keys() | current.keys()
            if name not in fresh or name not in current or not filecmp.cmp(fresh[name], current[name], shallow=False)
        )
        if args.check:
            if stale:
                print("generated code is out of date: " + ", ".join(stale), file=sys.stderr)
                print("run: python protos/generate.py", file=sys.stderr)
                return 1
            return 0
        for name in current.keys() - fresh.keys():
            current[name].unlink()
        for name, path in fresh.items():
            shutil.copyfile(path, PACKAGE_DIR / name)
    print(f"generated {len(fresh)} files in {PACKAGE_DIR.relative_to(PROTO_ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
