"""Metric endpoints: where they listen, and what a killed worker leaves behind.

The multiprocess cases run in child processes: prometheus_client picks its value
storage when it is first imported, and a SIGKILL is the point of the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from saga.adapters.prometheus import exposition, multiprocess
from saga.config import ConfigError, Settings
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]

# A worker's main process: its endpoint up, something counted, then a SIGKILL
# (no exit handler runs). Prints the multiprocess directory it used.
KILLED_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from saga.adapters.prometheus import metrics, multiprocess
    with multiprocess.worker_endpoint(int(sys.argv[1])):
        metrics.enqueued("order-payment")
        print(os.environ["PROMETHEUS_MULTIPROC_DIR"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
)
NEXT_WORKER = textwrap.dedent(
    """
    import os, sys
    from saga.adapters.prometheus import multiprocess
    with multiprocess.worker_endpoint(int(sys.argv[1])):
        print(os.environ["PROMETHEUS_MULTIPROC_DIR"], flush=True)
    """
)


def run_python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != multiprocess.MULTIPROC_ENV}
    env.update(TMPDIR=str(tmp), PYTHONPATH=str(ROOT), **extra)
    return env


def test_an_endpoint_listens_on_loopback_unless_told_otherwise() -> None:
    server = exposition.serve(free_port(), "test")
    assert server is not None
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_address_setting_defaults_to_loopback_and_refuses_an_empty_one() -> None:
    assert Settings.from_env({}).metrics_address == "127.0.0.1"
    assert Settings.from_env({"SAGA_METRICS_ADDRESS": "0.0.0.0"}).metrics_address == "0.0.0.0"
    with pytest.raises(ConfigError, match="SAGA_METRICS_ADDRESS"):
        Settings.from_env({"SAGA_METRICS_ADDRESS": " "})
    with pytest.raises(ConfigError, match="SAGA_METRICS_PORT"):
        Settings.from_env({"SAGA_METRICS_PORT": "70000"})


def test_the_directory_of_a_sigkilled_worker_is_removed_when_the_next_one_starts(
    tmp_path: Path,
) -> None:
    killed = run_python(KILLED_WORKER, clean_env(tmp_path))
    assert killed.returncode == -9, killed.stderr
    left = Path(killed.stdout.strip())
    assert left.is_dir() and left.parent == tmp_path, (left, killed.stderr)

    after = run_python(NEXT_WORKER, clean_env(tmp_path))
    assert after.returncode == 0, after.stderr
    assert not left.exists(), f"{left} of the killed worker is still there"
    # The one that exited normally removed its own.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("saga-metrics")) == []


def test_a_given_directory_keeps_no_file_of_a_dead_worker_at_the_next_start(
    tmp_path: Path,
) -> None:
    given = tmp_path / "worker.1"
    env = clean_env(tmp_path, **{multiprocess.MULTIPROC_ENV: str(given)})
    killed = run_python(KILLED_WORKER, env)
    assert killed.returncode == -9, killed.stderr
    dead = sorted(p.name for p in given.iterdir())
    assert dead, "the killed worker wrote no metrics file"

    after = run_python(NEXT_WORKER, env)
    assert after.returncode == 0, after.stderr
    assert given.is_dir()
    left = sorted(p.name for p in given.iterdir())
    assert not set(dead) & set(left), f"files of the dead worker still summed: {left}"
