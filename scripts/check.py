"""The project's test command: lint, format check, types, then the whole test suite.

Run as `python -m scripts.check` from the repository root; extra arguments go to
pytest (e.g. `python -m scripts.check -k relay`).
"""

from __future__ import annotations

import subprocess
import sys


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    code = subprocess.call(cmd)
    if code:
        sys.exit(code)


def main() -> None:
    py = sys.executable
    run(py, "-m", "ruff", "check", ".")
    run(py, "-m", "ruff", "format", "--check", ".")
    run(py, "-m", "mypy")
    # The slowest tests are printed so the CI budget (45 of 90 minutes) can be watched.
    run(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=40", *sys.argv[1:])


if __name__ == "__main__":
    main()
