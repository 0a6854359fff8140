"""Every benchmark module imports: the benchmarks are commands of their own, outside
the suite, so a moved module they use would otherwise break them unseen (it did once,
when the test support moved)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_every_bench_module_imports() -> None:
    modules = sorted(f"bench.{p.stem}" for p in BENCH.glob("*.py") if p.stem != "__main__")
    assert {"bench.local", "bench.chain_run", "bench.floor", "bench.scale"} <= set(modules)
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith('bench.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BENCH.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert set(modules) <= set(json.loads(out.stdout.splitlines()[-1]))
