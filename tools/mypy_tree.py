"""Type-checks the faceharmony packages with mypy.

setuptools maps each import package to a top-level folder (pyproject.toml, [tool.setuptools] package-dir:
faceharmony.core is core/, faceharmony.server is server/, ...), and the editable install resolves that mapping
with an import hook that mypy does not run. This script builds the tree mypy expects under build/typecheck
(faceharmony/<name> as symbolic links to the real folders, and an empty faceharmony/__init__.py), runs mypy on
it with the configuration in pyproject.toml ([tool.mypy]), and writes mypy's report with the real paths.

    .venv/bin/python tools/mypy_tree.py              # the packages in PACKAGES
    .venv/bin/python tools/mypy_tree.py -p faceharmony.core.settings    # other arguments go to mypy
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TREE = REPO / "build" / "typecheck"
# What `make lint` checks (the other process packages are not clean yet). The generated faceharmony.v1 is
# followed for its .pyi stubs; pyproject.toml silences its own errors.
PACKAGES = [
    "faceharmony.core",
    "faceharmony.launcher",
    "faceharmony.triton_launcher",
    "faceharmony.clients",
    "faceharmony.loadtest",
]


def package_dirs() -> dict[str, Path]:
    """faceharmony.<name> -> its folder, from pyproject.toml, so the tree follows any change there."""
    with open(REPO / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: REPO / folder for name, folder in mapping.items()}


def build_tree() -> Path:
    """build/typecheck/faceharmony with one link per mapped package; rebuilt each run, so no stale link stays."""
    root = TREE / "faceharmony"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    for name, folder in package_dirs().items():
        parts = name.split(".")
        if parts[0] != "faceharmony" or len(parts) != 2:
            raise SystemExit(f"tools/mypy_tree.py: cannot map {name!r}: only faceharmony.<name> is supported")
        (root / parts[1]).symlink_to(folder, target_is_directory=True)
    return root


def main(argv: list[str]) -> int:
    root = build_tree()
    targets = argv or [arg for package in PACKAGES for arg in ("-p", package)]
    env = dict(os.environ, MYPYPATH=str(TREE))
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(REPO / "pyproject.toml"),
        "--cache-dir",
        str(REPO / "build" / "mypy_cache"),
        *targets,
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    # mypy names the files by the links it was given; a report with the real paths opens in an editor.
    links = {
        str((root / name.split(".")[1]).relative_to(REPO)): os.path.relpath(folder, REPO)
        for name, folder in package_dirs().items()
    }
    pattern = re.compile("|".join(re.escape(link + os.sep) for link in sorted(links, key=len, reverse=True)))
    for stream, out in ((result.stdout, sys.stdout), (result.stderr, sys.stderr)):
        out.write(pattern.sub(lambda m: links[m.group(0)[: -len(os.sep)]] + os.sep, stream))
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
