"""The layout's rules, read from the source with `ast` (issue 11).

- core/ only shares: it imports no process package and not clients/, has no `def main`, parses no arguments
  and touches no signal handler, except core/process.py, the one entry helper, which installs the
  SIGTERM/SIGINT handlers (core/children.py may import `signal` for PR_SET_PDEATHSIG's signal number).
- A process package (server/, trainer/, order_worker/, retention/, launcher/, triton_launcher/) imports no
  other process package; each has `main.py` with a top-level `def main(...) -> int` and a `__main__.py`.
- clients/ talks gRPC only: of the project it imports faceharmony.v1 and itself, never core or a process.
- loadtest/ is an operator tool (like faceharmony-admin, it works with the system's settings): it uses core and
  the SDK in clients/, never a process package; nothing imports it.
- triton_models/ runs inside Triton's Python backend and uses core only.
- Every [project.scripts] entry of pyproject.toml names a `main` annotated `-> int`.

An import is any `import x` or `from x import y` at any depth (inside functions and `if TYPE_CHECKING:` too)
and `importlib.import_module("x")` / `__import__("x")` with a literal name. A module name in a string, such as
`[sys.executable, "-m", "faceharmony.server"]` in the launcher, starts another process: not an import.

Each checker takes the repository root and returns its violations as `path:line: message`, so the tests run
it on the real tree (no violations) and on small synthetic trees (each rule reports its violation).
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE = "core"
PROCESSES = ("server", "trainer", "order_worker", "retention", "launcher", "triton_launcher")
CLIENTS = "clients"
LOADTEST = "loadtest"
TRITON_MODELS = "triton_models"
# Folders whose package is faceharmony.<folder>; triton_models/ is loaded by Triton from its path.
PACKAGES = (CORE, *PROCESSES, CLIENTS, LOADTEST)

# The one place in core that installs signal handlers, and the one that may read signal numbers.
SIGNAL_HANDLERS_ALLOWED = "core/process.py"
SIGNAL_IMPORT_ALLOWED = {SIGNAL_HANDLERS_ALLOWED, "core/children.py"}
# Calls that install or change how a signal is handled.
SIGNAL_HANDLER_CALLS = {"signal", "set_wakeup_fd", "siginterrupt", "pthread_sigmask", "add_signal_handler"}
ARGUMENT_PARSERS = {"argparse", "optparse", "getopt"}


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # the absolute name imported; for `from x import y`, "x.y"
    shown: str  # the statement as written, for the message


def python_files(root: Path, folder: str) -> list[Path]:
    return sorted(p for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts)


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text("utf-8"), filename=str(path))


def module_package(root: Path, path: Path) -> str:
    """The package a file's relative imports start from: faceharmony.<folder>.<subfolders>."""
    rel = path.relative_to(root)
    return ".".join(["faceharmony", *rel.parts[:-1]])


def imports_in(root: Path, path: Path) -> list[Import]:
    found = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found += [Import(node.lineno, alias.name, f"import {alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_package(root, path).split(".")
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            shown = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            for alias in node.names:
                found.append(Import(node.lineno, base if alias.name == "*" else f"{base}.{alias.name}", shown))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.args[0].value
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}) or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            if dynamic and isinstance(name, str):
                found.append(Import(node.lineno, name, f"{ast.unparse(func)}({name!r})"))
    return found


def project_part(module: str) -> str | None:
    """ "core", "server", "v1", "clients"... for faceharmony.<part>[...]; None outside the project."""
    parts = module.split(".")
    return parts[1] if parts[0] == "faceharmony" and len(parts) > 1 else None


def forbidden(folder: str, part: str) -> str | None:
    """Why `folder` may not import faceharmony.`part`, or None where it may."""
    if part == LOADTEST and folder != LOADTEST:
        return "the load tester is imported (it is an operator tool that nothing depends on)"
    if folder == CORE and (part in PROCESSES or part == CLIENTS):
        return "core imports a process package or clients"
    if folder == LOADTEST and part in PROCESSES:
        return "loadtest/ imports a process package (it drives the system from outside)"
    if folder in PROCESSES and part in PROCESSES and part != folder:
        return "a process package imports another process package"
    if folder == CLIENTS and part not in {CLIENTS, "v1"}:
        return "clients/ imports more of the project than faceharmony.v1 (gRPC only)"
    if folder == TRITON_MODELS and part != CORE:
        return "triton_models/ imports more of the project than core"
    return None


def boundary_violations(root: Path) -> list[str]:
    out = []
    for folder in (*PACKAGES, TRITON_MODELS):
        for path in python_files(root, folder):
            for imp in imports_in(root, path):
                part = project_part(imp.module)
                why = part and forbidden(folder, part)
                if why:
                    out.append(f"{path.relative_to(root)}:{imp.line}: {why}: {imp.shown}")
    return out


def core_violations(root: Path) -> list[str]:
    """No entry point, argument parsing or signal handling in core, apart from core/process.py's handlers."""
    out = []
    for path in python_files(root, CORE):
        rel = path.relative_to(root).as_posix()
        tree = parse(path)
        signal_names = set()  # names bound to the signal module or to its handler functions
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "main":
                out.append(f"{where}: `def main` in core (entry points live in the process packages)")
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    if top in ARGUMENT_PARSERS:
                        out.append(f"{where}: core imports {alias.name} (argument parsing belongs to a process)")
                    if top == "signal":
                        signal_names.add(alias.asname or "signal")
                        if rel not in SIGNAL_IMPORT_ALLOWED:
                            out.append(f"{where}: core imports signal outside {sorted(SIGNAL_IMPORT_ALLOWED)}")
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                top = node.module.split(".")[0]
                if top in ARGUMENT_PARSERS:
                    out.append(f"{where}: core imports from {node.module} (argument parsing belongs to a process)")
                if top == "signal":
                    if rel not in SIGNAL_IMPORT_ALLOWED:
                        out.append(f"{where}: core imports signal outside {sorted(SIGNAL_IMPORT_ALLOWED)}")
                    handlers = [a.name for a in node.names if a.name in SIGNAL_HANDLER_CALLS or a.name == "*"]
                    if handlers and rel != SIGNAL_HANDLERS_ALLOWED:
                        out.append(f"{where}: core imports signal handler functions {handlers}")
        for node in ast.walk(tree):
            if rel == SIGNAL_HANDLERS_ALLOWED or not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in SIGNAL_HANDLER_CALLS:
                owner_is_signal = isinstance(func.value, ast.Name) and func.value.id in signal_names
                if owner_is_signal or func.attr == "add_signal_handler":
                    out.append(
                        f"{rel}:{node.lineno}: {ast.unparse(func)}() in core: only {SIGNAL_HANDLERS_ALLOWED} "
                        "handles signals"
                    )
    return out


def returns_int(func: ast.FunctionDef) -> bool:
    ann = func.returns
    return (isinstance(ann, ast.Name) and ann.id == "int") or (isinstance(ann, ast.Constant) and ann.value == "int")


def main_violations(path: Path, shown: str) -> list[str]:
    """`path` must define a top-level `def main(...) -> int`."""
    if not path.is_file():
        return [f"{shown}: missing (it must define `def main(...) -> int`)"]
    mains = [n for n in parse(path).body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    if not mains:
        return [f"{shown}:1: no top-level `def main(...) -> int`"]
    return [f"{shown}:{m.lineno}: `def main` is not annotated `-> int`" for m in mains if not returns_int(m)]


def entry_violations(root: Path) -> list[str]:
    out = []
    for folder in PROCESSES:
        out += main_violations(root / folder / "main.py", f"{folder}/main.py")
        if not (root / folder / "__main__.py").is_file():
            out.append(f"{folder}/__main__.py: missing (`python -m faceharmony.{folder}` must run the process)")
    return out


def module_file(root: Path, package_dir: dict[str, str], module: str) -> Path | None:
    """The source file of `module`, through [tool.setuptools] package-dir (longest matching package first)."""
    for package in sorted(package_dir, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            rest = module[len(package) :].lstrip(".").split(".") if module != package else []
            base = root / package_dir[package] / Path(*rest) if rest else root / package_dir[package]
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def script_violations(root: Path) -> list[str]:
    pyproject = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))
    package_dir = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    out = []
    for name, target in pyproject.get("project", {}).get("scripts", {}).items():
        module, _, func = target.partition(":")
        where = f"pyproject.toml [project.scripts] {name} = {target!r}"
        if func != "main":
            out.append(f"{where}: the entry must be a function named main")
            continue
        path = module_file(root, package_dir, module)
        if path is None:
            out.append(f"{where}: no source file for {module}")
            continue
        out += [f"{v} ({where})" for v in main_violations(path, path.relative_to(root).as_posix())]
    return out


CHECKERS = [boundary_violations, core_violations, entry_violations, script_violations]


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_the_repository_keeps_the_layout(checker):
    violations = checker(ROOT)
    assert not violations, "\n".join(violations)


def test_the_checkers_see_every_folder():
    """A checker that reads nothing passes vacuously: the real tree must have files in every folder it reads."""
    for folder in (*PACKAGES, TRITON_MODELS):
        assert python_files(ROOT, folder), folder
    assert any(project_part(i.module) == CORE for p in python_files(ROOT, "server") for i in imports_in(ROOT, p))


# A small tree that keeps every rule, and the violations each checker must report in it.

CLEAN_TREE = {
    "pyproject.toml": """
        [project.scripts]
        demo-server = "faceharmony.server.main:main"
        demo-cli = "faceharmony.clients.cli:main"
        [tool.setuptools]
        package-dir = { "faceharmony.core" = "core", "faceharmony.server" = "server", "faceharmony.clients" = "clients" }
    """,
    "core/__init__.py": "",
    "core/settings.py": "from faceharmony.v1 import account_pb2\n",
    "core/process.py": "import signal\n\ndef run():\n    signal.signal(signal.SIGTERM, print)\n",
    "core/children.py": "import signal\n\nDEFAULT = signal.SIGTERM\n",
    "clients/cli.py": "import grpc\nfrom faceharmony.v1 import account_pb2\n\ndef main(argv=None) -> int:\n    return 0\n",
    "triton_models/demo/1/model.py": "def load():\n    from faceharmony.core.settings import Settings\n",
    **{f"{p}/__main__.py": f"from faceharmony.{p}.main import main\n" for p in PROCESSES},
    **{
        f"{p}/main.py": "import argparse\nfrom faceharmony.core import process\nfrom . import main as me\n\n"
        "def main(argv=None) -> int:\n    return 0\n"
        for p in PROCESSES
    },
    # Module names handed to `python -m` are processes started, not imports.
    "launcher/children.py": 'import sys\nCHILDREN = [[sys.executable, "-m", "faceharmony.server"]]\n',
}

VIOLATIONS = [
    # (file, its source, the checker, what the report must contain)
    ("core/jobs/queue.py", "x = 1\nfrom faceharmony.server import app\n", boundary_violations, "core/jobs/queue.py:2"),
    ("core/util.py", "def f():\n    import faceharmony.trainer.lora\n", boundary_violations, "core/util.py:2"),
    ("core/ui.py", "from faceharmony.clients.errors import x\n", boundary_violations, "core/ui.py:1"),
    (
        "core/late.py",
        "import importlib\nimportlib.import_module('faceharmony.retention')\n",
        boundary_violations,
        "core/late.py:2",
    ),
    ("server/bad.py", "from faceharmony.trainer import worker\n", boundary_violations, "server/bad.py:1"),
    ("trainer/bad.py", "from faceharmony import order_worker\n", boundary_violations, "trainer/bad.py:1"),
    ("launcher/logic/bad.py", "from ...server import app\n", boundary_violations, "launcher/logic/bad.py:1"),
    ("clients/bad.py", "from faceharmony.core.settings import Settings\n", boundary_violations, "clients/bad.py:1"),
    ("clients/worse.py", "import faceharmony.server.access\n", boundary_violations, "clients/worse.py:1"),
    (
        "loadtest/bad.py",
        "from faceharmony.order_worker.worker import TritonImages\n",
        boundary_violations,
        "loadtest/bad.py:1",
    ),
    ("server/bench.py", "from faceharmony.loadtest import seed\n", boundary_violations, "server/bench.py:1"),
    (
        "triton_models/demo/1/bad.py",
        "from faceharmony.triton_launcher import shm\n",
        boundary_violations,
        "triton_models/demo/1/bad.py:1",
    ),
    ("core/cli.py", "import argparse\n", core_violations, "core/cli.py:1"),
    ("core/entry.py", "\n\ndef main() -> int:\n    return 0\n", core_violations, "core/entry.py:3"),
    ("core/stop.py", "import signal\n", core_violations, "core/stop.py:1"),
    (
        "core/children.py",
        "import signal\nsignal.signal(signal.SIGTERM, print)\n",
        core_violations,
        "core/children.py:2",
    ),
    ("core/children.py", "from signal import signal\n", core_violations, "core/children.py:1"),
    ("core/aio.py", "def f(loop):\n    loop.add_signal_handler(15, print)\n", core_violations, "core/aio.py:2"),
    ("retention/main.py", "def main(argv=None):\n    return 0\n", entry_violations, "retention/main.py:1"),
    ("trainer/main.py", "def run() -> int:\n    return 0\n", entry_violations, "trainer/main.py:1"),
    ("clients/cli.py", "def main(argv=None) -> None:\n    pass\n", script_violations, "clients/cli.py:1"),
]


def build(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = text.splitlines()
        if rel.endswith(".toml"):  # indented above for reading; TOML keys must start their lines
            lines = [line.strip() for line in lines]
        path.write_text("\n".join(lines) + "\n", "utf-8")
    return root


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_a_tree_that_keeps_the_rules_passes(tmp_path, checker):
    assert checker(build(tmp_path, CLEAN_TREE)) == []


@pytest.mark.parametrize(("rel", "source", "checker", "expected"), VIOLATIONS, ids=[v[3] for v in VIOLATIONS])
def test_each_rule_reports_its_violation_with_file_and_line(tmp_path, rel, source, checker, expected):
    root = build(tmp_path, {**CLEAN_TREE, rel: source})
    violations = checker(root)
    assert any(v.startswith(expected) for v in violations), violations


@pytest.mark.parametrize("missing", ["order_worker/__main__.py", "launcher/main.py"])
def test_a_process_package_without_its_entry_files_is_reported(tmp_path, missing):
    root = build(tmp_path, CLEAN_TREE)
    (root / missing).unlink()
    assert any(v.startswith(missing) for v in entry_violations(root))


def test_a_script_that_is_not_main_or_has_no_source_is_reported(tmp_path):
    pyproject = """
        [project.scripts]
        x = "faceharmony.server.main:run"
        y = "faceharmony.gone:main"
        [tool.setuptools]
        package-dir = { "faceharmony.server" = "server" }
    """
    violations = script_violations(build(tmp_path, {**CLEAN_TREE, "pyproject.toml": pyproject}))
    assert any("x = " in v and "named main" in v for v in violations), violations
    assert any("y = " in v and "no source file" in v for v in violations), violations
