"""The repository's three distributions hold what they say (README, "Two commands on
a fresh machine"): the product's wheel only `saga`, without the chaincode's shim
library among its requirements; the chaincode's wheel the sagafacts chaincode and
that library; the tools' wheel the devnet and the real-Fabric launcher with their
package data. Each wheel is built as pip builds it, from a copy of the tree (an
in-tree build would leave build/ behind and could ship stale files from it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Not sources: environments, caches, Fabric binaries, npm packages anywhere; build
# output at a project's top (a file named `build` elsewhere is a source: the
# launcher's external builder has one).
ANYWHERE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".fabric",
    "node_modules",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    ".devnet",
    ".saga-*",
)


def _ignored(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) in {ROOT, ROOT / "chaincode", ROOT / "tools"}
    return set(ANYWHERE(folder, names)) | ({"build", "dist"} & set(names) if top else set())


# project folder (relative to the repository) -> distribution name
PROJECTS = {".": "saga_orchestrator", "chaincode": "sagafacts_chaincode", "tools": "saga_devtools"}
# Top-level packages that must never be in the product's wheel.
TOOLING = {"saga_devnet", "saga_fabricnet", "saga_cluster", "chaincode", "sagafacts_chaincode"}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """Each project's wheel, or pip's output when it could not be built."""
    src = tmp_path_factory.mktemp("src") / "repo"
    shutil.copytree(ROOT, src, ignore=_ignored, symlinks=True)
    out = tmp_path_factory.mktemp("wheels")
    builds = {
        folder: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "-w",
                str(out / name),
                str(src / folder),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for folder, name in PROJECTS.items()
    }
    result: dict[str, Path | str] = {}
    for folder, proc in builds.items():
        output, _ = proc.communicate(timeout=240)
        found = sorted((out / PROJECTS[folder]).glob(f"{PROJECTS[folder]}-*.whl"))
        result[folder] = found[0] if proc.returncode == 0 and found else output or "no wheel"
    return result


def _open(wheels: dict[str, Path | str], folder: str) -> tuple[list[str], list[str], str]:
    """The wheel's file names, its Requires-Dist names (extras' included, marked) and
    its entry points."""
    wheel = wheels[folder]
    assert isinstance(wheel, Path), f"pip could not build {folder}/:\n{wheel}"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = (
            z.read(f"{info}/entry_points.txt").decode()
            if (f"{info}/entry_points.txt" in names)
            else ""
        )
    requires = []
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            name = re.match(r"[A-Za-z0-9._-]+", spec)
            assert name, line
            canonical = re.sub(r"[-_.]+", "-", name.group(0)).lower()
            requires.append(canonical + (" (extra)" if "extra ==" in spec else ""))
    return names, requires, entry_points


def _top_levels(names: list[str]) -> set[str]:
    return {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}


def test_product_wheel_holds_saga_only(wheels: dict[str, Path | str]) -> None:
    names, requires, entry_points = _open(wheels, ".")
    tops = _top_levels(names)
    assert not tops & TOOLING, f"development tooling in the product's wheel: {tops & TOOLING}"
    # saga/entrypoints/celery/ is still beside saga/ until it moves into saga/entrypoints/celery.
    allowed = {"saga"} | ({"workers"} if (ROOT / "workers" / "__init__.py").exists() else set())
    assert tops <= allowed, f"not the product: {tops - allowed}"
    assert "fabric-chaincode-python" not in {r.removesuffix(" (extra)") for r in requires}
    assert not {"saga-devtools", "sagafacts-chaincode"} & set(requires), requires
    # What it does ship: the `saga` command's module and the store's migrations.
    script = re.search(r"^saga = ([\w.]+):", entry_points, re.M)
    assert script, entry_points
    assert script.group(1).replace(".", "/") + ".py" in names
    assert any("/_migrations/versions/" in n and n.endswith(".py") for n in names), names


def test_chaincode_wheel_holds_the_chaincode_and_its_shim(wheels: dict[str, Path | str]) -> None:
    names, requires, _ = _open(wheels, "chaincode")
    assert _top_levels(names) == {"sagafacts_chaincode"}
    for module in ("__main__", "contract", "facts", "server"):
        assert f"sagafacts_chaincode/{module}.py" in names
    assert "fabric-chaincode-python" in requires
    assert "saga-orchestrator" not in requires, "the chaincode does not need the orchestrator"


def test_tools_wheel_holds_the_devnet_and_the_launcher(wheels: dict[str, Path | str]) -> None:
    names, requires, _ = _open(wheels, "tools")
    assert _top_levels(names) == {"saga_devnet", "saga_fabricnet", "saga_cluster"}
    # Package data the launcher reads at run time.
    assert "saga_fabricnet/templates/configtx.yaml.tmpl" in names
    for script in ("detect", "build", "release"):
        assert f"saga_fabricnet/builder/bin/{script}" in names
    # The devnet's client code and the chaincode it starts come from the other two.
    assert {"saga-orchestrator", "sagafacts-chaincode"} <= set(requires), requires


IMPORT_ALL = """
import importlib, pkgutil, sys
for name in sys.argv[1:]:
    sys.modules[name] = None  # as if that distribution were not installed
import saga
failed = []
for info in pkgutil.walk_packages(saga.__path__, "saga."):
    if not info.name.endswith("__main__"):  # running the CLI is not importing it
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            failed.append(f"{info.name}: {exc}")
print("\\n".join(failed))
"""


def test_every_product_module_imports_without_the_tools(tmp_path: Path) -> None:
    """The product's wheel installed alone: no module of `saga` needs the devnet, the
    launcher or the chaincode at import (`saga devnet` and `saga demo --ledger` load
    them when asked, and say what to install when they are missing)."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, *sorted(TOOLING)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"need the tools at import:\n{result.stdout}"
