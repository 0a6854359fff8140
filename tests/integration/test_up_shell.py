"""`saga up` from the operator's shell: relative SAGA_FABRIC_* paths, the lines it
prints (API URL and token export, one metrics target per process), and what each
child gets (its own metrics port and multiprocess directory, a worker name per slot).

Small process files stand in for compose/processes.toml: a job that records the
environment it was given, and a plain HTTP server answering as the API.
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from saga.config import Settings
from saga.entrypoints.processes import (
    LocalProcessSet,
    ProcessSetError,
    ProcessSpec,
    free_port,
    listening,
    load_processes,
    run_up,
    select,
)
from tests.support.processes import ROOT, Processes
from tests.support.waiting import wait_for

RECORD_ENV = (
    "import json, os, pathlib; pathlib.Path('seen.json').write_text(json.dumps("
    "{k: v for k, v in os.environ.items() if k.startswith('SAGA_')}))"
)


def write_process_file(path: Path, api_port: int) -> Path:
    path.write_text(
        "[record]\n"
        f'command = ["python", "-c", "{RECORD_ENV}"]\n'
        "job = true\n\n"
        "[api]\n"
        f'command = ["python", "-m", "http.server", "{api_port}", "--bind", "127.0.0.1"]\n'
    )
    return path


def up_once(monkeypatch: pytest.MonkeyPatch, caller: Path, api_port: int) -> list[str]:
    """Run `saga up` in `caller` with a relative --dir until it has started everything."""
    said: list[str] = []
    stop = threading.Event()
    stop.set()  # supervise returns at once; the set is stopped on the way out
    monkeypatch.chdir(caller)
    run_up(
        workdir=Path(".saga-up"),
        scale={},
        without=[],
        process_file=write_process_file(caller / "processes.toml", api_port),
        say=said.append,
        stop=stop,
    )
    return said


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("SAGA_API_TOKEN", "SAGA_API_TOKEN_FILE", "SAGA_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    caller = tmp_path / "project"
    caller.mkdir()
    return caller


def test_relative_fabric_paths_are_resolved_against_the_callers_directory(
    monkeypatch: pytest.MonkeyPatch, shell: Path
) -> None:
    monkeypatch.setenv("SAGA_FABRIC_PROFILE", "net/connection-org1.json")
    monkeypatch.setenv("SAGA_FABRIC_MSP_DIR", "net/users/User1/msp")
    monkeypatch.setenv("SAGA_FABRIC_TLS_KEY_FILE", "secrets/client.key")
    monkeypatch.setenv("SAGA_FABRIC_CHANNEL", "mychannel")
    api_port = free_port()
    monkeypatch.setenv("SAGA_API_PORT", str(api_port))

    said = up_once(monkeypatch, shell, api_port)

    seen = json.loads((shell / ".saga-up" / "seen.json").read_text())
    assert seen["SAGA_FABRIC_PROFILE"] == str(shell / "net/connection-org1.json")
    assert seen["SAGA_FABRIC_MSP_DIR"] == str(shell / "net/users/User1/msp")
    assert seen["SAGA_FABRIC_TLS_KEY_FILE"] == str(shell / "secrets/client.key")
    assert seen["SAGA_FABRIC_CHANNEL"] == "mychannel"  # not a path
    assert any("SAGA_FABRIC_PROFILE" in line and "no devnet" in line for line in said), said


def test_up_prints_the_api_url_and_token_lines_for_the_operators_shell(
    monkeypatch: pytest.MonkeyPatch, shell: Path
) -> None:
    api_port = free_port()
    monkeypatch.setenv("SAGA_API_PORT", str(api_port))
    monkeypatch.delenv("SAGA_FABRIC_PROFILE", raising=False)

    said = up_once(monkeypatch, shell, api_port)

    token_file = shell / ".saga-up" / "api-token"
    assert token_file.read_text().strip()
    export = f'export SAGA_API_URL=http://127.0.0.1:{api_port} SAGA_API_TOKEN="$(cat {token_file})"'
    assert export in said, said
    # The token itself stays in its file, out of terminals and captured logs.
    assert not any(token_file.read_text().strip() in line for line in said)


def services(*names: str) -> list[ProcessSpec]:
    specs = select(load_processes(), devnet=False)
    return [s for s in specs if s.name in names]


def test_each_process_that_serves_metrics_gets_its_own_port_and_worker_slot_name(
    tmp_path: Path,
) -> None:
    base = free_port()
    specs = services("api", "relay", "worker", "watcher", "beat")
    procs = LocalProcessSet(
        specs,
        workdir=tmp_path,
        env={"SAGA_METRICS_PORT": str(base), "SAGA_METRICS_ADDRESS": "127.0.0.1"},
        scale={"worker": 3},
    )
    children = procs.plan()
    ports = {c.label: procs.child_env(c)["SAGA_METRICS_PORT"] for c in children}
    # Services with one copy first, so scaling workers moves no other target.
    assert ports == {
        "api.1": "0",
        "relay.1": str(base),
        "watcher.1": str(base + 1),
        "beat.1": "0",
        "worker.1": str(base + 2),
        "worker.2": str(base + 3),
        "worker.3": str(base + 4),
    }
    targets = json.loads(procs.write_metrics_targets().read_text())
    assert [t["labels"]["process"] for t in targets] == [
        "relay.1",
        "watcher.1",
        "worker.1",
        "worker.2",
        "worker.3",
    ]
    assert targets[2]["targets"] == [f"127.0.0.1:{base + 2}"]

    workers = [c for c in children if c.spec.name == "worker"]
    assert [c.argv()[-2:] for c in workers] == [["--hostname", f"worker{i}@%h"] for i in (1, 2, 3)]
    dirs = {procs.child_env(c)["PROMETHEUS_MULTIPROC_DIR"] for c in workers}
    assert dirs == {str(tmp_path / "metrics" / f"worker.{i}") for i in (1, 2, 3)}


def test_metrics_ports_from_the_given_first_one_and_a_taken_one_is_a_clear_error(
    tmp_path: Path,
) -> None:
    specs = services("relay", "worker")
    given = LocalProcessSet(specs, workdir=tmp_path, env={"SAGA_METRICS_PORT": "9101"}, scale={})
    # Every child gets a port of its own, never the one value from the shell.
    assert [given.child_env(c)["SAGA_METRICS_PORT"] for c in given.plan()] == [
        "9101",
        "9102",
        "9103",
    ]
    none = LocalProcessSet(specs, workdir=tmp_path, env={}, scale={})
    assert {none.child_env(c)["SAGA_METRICS_PORT"] for c in none.plan()} == {"0"}

    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = LocalProcessSet(
            specs, workdir=tmp_path, env={"SAGA_METRICS_PORT": str(port)}, scale={}
        )
        with pytest.raises(ProcessSetError, match=rf"{port}.*relay\.1.*SAGA_METRICS_PORT"):
            busy.check_metrics_ports()


def readme_enqueue_curl() -> str:
    """The shell block of the README's Enqueue section."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```sh\n", text.index("### Enqueue")) + len("```sh\n")
    return text[start : text.index("\n```", start)]


def test_the_readme_enqueue_curl_is_accepted_by_an_api_behind_a_token(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    port = free_port()
    settings = replace(broker_settings, database_url=pg_url, api_port=port, api_token="readme")
    url = f"http://127.0.0.1:{port}"
    with Processes(tmp_path / "logs") as procs:
        api = procs.spawn("api", ["saga", "api"], settings)
        wait_for(
            lambda: listening(f"127.0.0.1:{port}"),
            timeout=60,
            what="saga api to listen",
            report=procs.report,
            alive=[api],
        )
        # What the export line of `saga up` sets, and nothing else.
        env = {"PATH": "/usr/bin:/bin", "SAGA_API_URL": url, "SAGA_API_TOKEN": "readme"}
        done = subprocess.run(
            ["bash", "-euc", readme_enqueue_curl()],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer.get("saga_id") and answer.get("created") is True, answer


def test_the_working_directory_of_saga_up_is_ignored_by_git() -> None:
    # It holds the generated API token, logs and devnet keys: never to be committed.
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".saga-up/api-token"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, ".saga-up/ is missing from .gitignore"


def test_saga_up_prints_the_export_line_whole_in_a_narrow_terminal(
    monkeypatch: pytest.MonkeyPatch, shell: Path
) -> None:
    import os
    import signal
    import sys

    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env.update(SAGA_API_PORT=str(api_port), COLUMNS="60", PYTHONPATH=str(ROOT))
    process_file = write_process_file(shell / "processes.toml", api_port)
    up = subprocess.Popen(
        [sys.executable, "-m", "saga", "up", "--file", str(process_file)],
        cwd=shell,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("running;"):
                break
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    token_file = shell / ".saga-up" / "api-token"
    export = f'export SAGA_API_URL=http://127.0.0.1:{api_port} SAGA_API_TOKEN="$(cat {token_file})"'
    # One line, as typed: a wrapped one would paste as two broken commands.
    assert export in lines, "\n".join(lines)
