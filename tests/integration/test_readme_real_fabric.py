"""README.md's "Using a real Fabric network", followed word for word on REAL Fabric.

The section's ```sh block (the one right under its heading, after the comment naming
this test) runs in one bash, from the repository's folder, as a reader pastes it:
the same way tests/integration/test_runbooks.py runs runbook blocks (tests/support/
deployment.py parses the block; every command must exit 0, the first that does not
fails the test with its README line). The only changes are the ones the section tells
the reader to make, the four lines marked ``# change me``: the folder of the Fabric
archives (found as scripts/test.sh finds it), the work folder (a fresh
temporary one), the PostgreSQL URL (a new, empty database: the block's own `saga db
upgrade` makes the schema) and the RabbitMQ URL (a new virtual host, so no other
test's worker takes this test's messages).

The block installs the binaries (already there: the install script checks and keeps
them), starts a real Fabric 2.5.16 network in the background with `python -m
saga_fabricnet up`, runs the orchestrator's processes, one ledger saga, `saga audit`,
and stops everything. Afterwards the test checks the saga completed with one VALID
ledger transaction and that the block's own last command stopped the network. A
missing Fabric binary makes the block, so the test, fail: never a skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from sqlalchemy import select

from saga.adapters.sql import create_engine
from saga.adapters.sql.tables import ledger_attempts, sagas
from saga.config import Settings
from saga_fabricnet import FabricNetwork
from tests.support.fabricnet import fabric_archives
from tests.support.processes import ROOT
from tests.support.runbook_blocks import Block, read_blocks

README = ROOT / "README.md"
HEADING = "## Using a real Fabric network"
MARKER = "<!-- run word for word by tests/integration/test_readme_real_fabric.py -->"
# `export NAME=VALUE   # change me...`: the lines the section tells the reader to change.
_CHANGE_ME = re.compile(r"^export (\w+)=(\S+)(\s+# change me\b.*)$", re.M)
CHANGED = ("FABRIC_ARCHIVES", "WORK", "SAGA_DATABASE_URL", "SAGA_BROKER_URL")
BLOCK_TIMEOUT = 240.0


def section_block() -> Block:
    """The ```sh block right under the section's heading, after the marker comment."""
    lines = README.read_text().splitlines()
    assert HEADING in lines, f"README.md has no line {HEADING!r}"
    start = lines.index(HEADING) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    blocks = [b for b in read_blocks(README) if start < b.line <= end]
    assert blocks, f"README.md: no fenced block under {HEADING!r}"
    block = blocks[0]
    where = f"README.md:{block.line}"
    assert block.language == "sh", f"{where}: the section's first block must be ```sh"
    assert lines[block.line - 2] == MARKER, f"{where}: the line above the block must be {MARKER}"
    assert block.commands, f"{where}: an empty block"
    return block


def substituted(block: Block, values: dict[str, str]) -> list[tuple[int, str]]:
    """(README line, command) with the `# change me` values replaced, nothing else."""
    found: list[str] = []

    def change(match: re.Match[str]) -> str:
        found.append(match.group(1))
        return f"export {match.group(1)}={values[match.group(1)]}{match.group(3)}"

    commands = [(c.line, _CHANGE_ME.sub(change, c.text)) for c in block.commands]
    assert sorted(found) == sorted(CHANGED), (
        f"README.md:{block.line}: the lines marked '# change me' set {found}, the test "
        f"replaces {list(CHANGED)}; keep them in step"
    )
    return commands


@dataclass
class Run:
    statuses: list[tuple[int, int]]  # (README line, exit status), in order
    output: str
    timed_out: bool

    def failure(self, commands: list[tuple[int, str]]) -> str | None:
        for line, status in self.statuses:
            if status != 0:
                text = dict(commands)[line]
                return f"README.md:{line}: exited {status}:\n    {text}\n{self._tail()}"
        if len(self.statuses) < len(commands):
            line, text = commands[len(self.statuses)]
            why = "timed out" if self.timed_out else "never finished (the shell exited)"
            return f"README.md:{line}: {why}:\n    {text}\n{self._tail()}"
        return None

    def _tail(self) -> str:
        return f"--- output of the block ---\n{self.output[-8000:]}"


def run_commands(
    commands: list[tuple[int, str]], env: dict[str, str], cwd: Path, status_file: Path
) -> Run:
    """One bash, as tests/support/runbook_blocks.run_block does, but in its own session:
    the block leaves background jobs (network, relay, worker, watcher) if a command
    fails, and the test must be able to end them all."""
    parts = ["set -o pipefail"]
    for line, text in commands:
        parts.append(f"echo '>>> README.md:{line}' >&2")
        parts.append(text)
        parts.append(
            f'__rc=$?; echo "{line} $__rc" >> "{status_file}"; [ "$__rc" -eq 0 ] || exit 99'
        )
    proc = subprocess.Popen(
        ["bash", "-c", "\n".join(parts) + "\n"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
        _end_session(proc.pid)
        output, _ = proc.communicate(timeout=30)
    finally:
        # Background jobs the block did not stop (it failed before its last line):
        # SIGTERM makes the launcher stop the network's members too.
        _end_session(proc.pid)
    statuses: list[tuple[int, int]] = []
    with contextlib.suppress(FileNotFoundError):
        for row in status_file.read_text().splitlines():
            number, status = row.split()
            statuses.append((int(number), int(status)))
    return Run(statuses, output or "", timed_out)


def _end_session(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
        time.sleep(1.0)  # let the launcher begin stopping its members


@pytest.fixture
def database(pg_admin_url: str) -> Iterator[str]:
    """A new, empty database (no schema: the README's `saga db upgrade` makes it)."""
    name = f"saga_readme_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = pg_admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _running_members(directory: Path) -> list[str]:
    if not (directory / "fabricnet.json").exists():
        return []
    net = FabricNetwork.attach(directory)
    return [m for m in net.members if net.running(m)]


def _rabbitmqctl(*args: str, attempts: int = 1) -> str | None:
    """None if it worked, else what rabbitmqctl said; retried (the broker may be
    restarting: the chaos and fault tests restart it)."""
    said = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(3.0)
        done = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode == 0:
            return None
        said = f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
    return said


@pytest.fixture
def broker_url(rabbitmq_url: str) -> Iterator[str]:
    """The broker's URL on a new virtual host, deleted afterwards."""
    vhost = f"saga-readme-{uuid.uuid4().hex[:10]}"
    url = urlsplit(rabbitmq_url)
    hint = (
        "\nThe test gives the README its own RabbitMQ virtual host: run it where rabbitmqctl "
        "manages the broker on 127.0.0.1 (as root or the rabbitmq user)"
    )
    failed = _rabbitmqctl("add_vhost", vhost, attempts=5)
    assert failed is None, failed + hint
    try:
        failed = _rabbitmqctl(
            "set_permissions", "-p", vhost, url.username or "guest", ".*", ".*", ".*", attempts=5
        )
        assert failed is None, failed + hint
        yield f"{url.scheme}://{url.netloc}/{vhost}"
    finally:
        failed = _rabbitmqctl("delete_vhost", vhost, attempts=10)
        if failed is not None:
            # A leftover empty vhost harms nothing; the test's verdict stands.
            warnings.warn(f"virtual host {vhost} left behind: {failed}", stacklevel=1)


def test_readme_real_fabric_section_runs_word_for_word(
    database: str, broker_url: str, tmp_path: Path
) -> None:
    assert (ROOT / ".venv" / "bin" / "activate").is_file(), (
        "the section starts with `. .venv/bin/activate`: make the virtualenv first "
        "(python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' -e ./chaincode -e ./tools)"
    )
    work = tmp_path / "work"  # the section says "it is created": not made here
    commands = substituted(
        section_block(),
        {
            "FABRIC_ARCHIVES": str(fabric_archives()),
            "WORK": str(work),
            "SAGA_DATABASE_URL": database,
            "SAGA_BROKER_URL": broker_url,
        },
    )
    # A reader's shell: none of the test session's SAGA_* or Fabric settings.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SAGA_", "FABRIC_", "CORE_", "ORDERER_"))
    }
    started = time.monotonic()
    try:
        run = run_commands(commands, env, ROOT, tmp_path / "statuses")
        seconds = time.monotonic() - started
        # Before the clean-up below: did the block's own last line stop the network?
        left = _running_members(work / "net")
    finally:
        # The network's members run in sessions of their own: stop any left over.
        if (work / "net" / "fabricnet.json").exists():
            with contextlib.suppress(Exception):
                FabricNetwork.attach(work / "net").down()
    failure = run.failure(commands)
    assert failure is None, failure
    assert FabricNetwork.attach(work / "net").state.version == "2.5.16"
    assert not left, f"the block's `kill $(jobs -p) && wait` left {left} running"

    # The saga completed, with exactly one VALID ledger transaction.
    engine = create_engine(Settings(database_url=database))
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(sagas.c.id, sagas.c.status, sagas.c.version)).all()
            attempts = connection.execute(
                select(ledger_attempts.c.state, ledger_attempts.c.code, ledger_attempts.c.block)
            ).all()
    finally:
        engine.dispose()
    assert [(r.status, r.version) for r in rows] == [("completed", 2)], rows
    assert len(attempts) == 1 and attempts[0].code == 0 and attempts[0].block >= 1, attempts
    print(f"README section on real Fabric 2.5.16: {seconds:.1f} s")
