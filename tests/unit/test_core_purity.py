"""saga.core is pure: importing it pulls in no broker, database or gRPC library."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import saga.core

FORBIDDEN = (
    "celery",
    "kombu",
    "sqlalchemy",
    "grpc",
    "fabric_protos",
    "hfc",
    "psycopg",
    "aio_pika",
    "fastapi",
)

CORE_DIR = Path(saga.core.__file__).parent
CORE_MODULES = sorted(
    f"saga.core.{m.name}" for m in pkgutil.iter_modules([str(CORE_DIR)]) if not m.ispkg
)


def test_core_has_the_expected_modules() -> None:
    # guards the two tests below against silently checking nothing
    for name in ("definitions", "machine", "retry", "state", "messages", "step_message"):
        assert f"saga.core.{name}" in CORE_MODULES


def test_importing_core_loads_no_io_library() -> None:
    script = f"""
import importlib, json, sys
for name in {["saga.core", *CORE_MODULES]!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(out.stdout)
    assert "saga.core.machine" in loaded
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert bad == [], f"saga.core pulled in {bad}"


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.append(str(node.args[0].value))
    return names


def test_no_core_module_imports_an_io_library() -> None:
    files = sorted(CORE_DIR.rglob("*.py"))
    assert len(files) >= len(CORE_MODULES)
    offenders = {
        str(f.relative_to(CORE_DIR)): bad
        for f in files
        if (bad := [n for n in _imports(f) if n.split(".")[0] in FORBIDDEN])
    }
    assert offenders == {}


def test_core_imports_only_core_from_saga() -> None:
    """The core may not reach into the adapters (which do import I/O libraries)."""
    offenders = {
        str(f.relative_to(CORE_DIR)): bad
        for f in sorted(CORE_DIR.rglob("*.py"))
        if (
            bad := [
                n for n in _imports(f) if n.startswith("saga.") and not n.startswith("saga.core")
            ]
        )
    }
    assert offenders == {}


def test_the_static_check_would_catch_an_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom sqlalchemy.orm import Session\nimport importlib\n"
        "importlib.import_module('kombu')\n"
    )
    found = [n for n in _imports(bad) if n.split(".")[0] in FORBIDDEN]
    assert found == ["sqlalchemy.orm", "kombu"]
