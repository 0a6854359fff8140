"""The catalogue's table (README.md) names only tests that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = Path(__file__).with_name("README.md")
NODE = re.compile(r"`(tests/[\w/]+\.py::[^`]+)`")


def referenced() -> list[str]:
    return NODE.findall(README.read_text())


def collected(files: set[str]) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return {line.strip() for line in out.stdout.splitlines() if "::" in line}


def test_every_node_id_in_the_table_exists() -> None:
    nodes = referenced()
    assert len(nodes) >= 40
    files = {n.split("::")[0] for n in nodes}
    found = collected(files)
    # A test named without its parameters stands for all of them, and a case id
    # stands for every backend it runs on (store_url adds "postgresql-"/"sqlite-").
    names = found | {n.split("[")[0] for n in found}
    names |= {re.sub(r"\[(postgresql|sqlite)-", "[", n) for n in found}
    missing = [n for n in nodes if n not in names]
    assert not missing, missing


def test_every_catalogue_test_is_in_the_table_and_names_its_case() -> None:
    nodes = {n.split("[")[0] for n in referenced()}
    for path in sorted(Path(__file__).parent.glob("test_*_cases.py")):
        source = path.read_text()
        for name in re.findall(r"^def (test_\w+)\(", source, re.M):
            assert f"tests/catalogue/{path.name}::{name}" in nodes, name
            body = source.split(f"def {name}(", 1)[1]
            assert '"""Case' in body.split("\ndef ", 1)[0], f"{name} names no case"
