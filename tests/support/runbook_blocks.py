r"""The runbooks' shell blocks as data, and running one as an operator's shell would.

**Blocks.** Every fenced ```sh block of a runbook is run as written. The
conventions a runbook follows (runbooks/README.md states them for readers):

- ``<!-- situation: NAME -->`` (an HTML comment, invisible when rendered) names
  the situation the blocks after it are run in, until the next one; NAME is a
  key of ``Situations.builders``. A block before any such comment runs in
  ``healthy`` (the deployment as it is).
- A comment line ``# exits N while the problem lasts`` (the words after the
  number are free) says the *next* command exits with N, not 0: the test
  requires exactly N, so the symptom is checked too.
- Other ``#`` lines are comments; a line ending in ``\`` continues.
- Commands of one block run in one bash process, in order (a variable set by
  one command is seen by the next), with ``pipefail``; the first command whose
  exit status is not the expected one fails the test, named with its runbook
  and line.
- ```console and ```text blocks are never run: they are for the operator's
  own environment (docker compose, rabbitmqctl, systemd).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ROOT

RUNBOOKS = ROOT / "runbooks"

_FENCE = re.compile(r"^```(\S*)\s*$")
_SITUATION = re.compile(r"<!--\s*situation:\s*([\w-]+)(?:\s*;\s*ends\s+(\w+))?\s*-->")
_EXPECT = re.compile(r"^#\s*exits\s+(\d+)\b")


# -- the runbooks' blocks --------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    text: str
    line: int
    expect: int = 0


@dataclass(frozen=True)
class Block:
    runbook: str
    line: int
    language: str
    situation: str
    commands: tuple[Command, ...]
    # Where the situation's comment is (0: none): blocks sharing it share one instance.
    situation_line: int = 0
    # The status its saga must reach once the blocks ran ("ends STATUS" in the comment).
    ends: str | None = None


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a runbook, with its situation and (for sh) its commands."""
    blocks: list[Block] = []
    situation, situation_line, ends = "healthy", 0, None
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        found = _SITUATION.search(lines[i])
        if found:
            situation, situation_line, ends = found.group(1), i + 1, found.group(2)
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, language = i + 1, fence.group(1)
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        commands = _commands(body) if language == "sh" else ()
        blocks.append(Block(path.name, start, language, situation, commands, situation_line, ends))
    return blocks


def _commands(body: list[tuple[int, str]]) -> tuple[Command, ...]:
    commands: list[Command] = []
    expect = 0
    pending: list[str] = []
    first = 0
    for number, raw in body:
        line = raw.rstrip()
        if not pending:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                wanted = _EXPECT.match(stripped)
                if wanted:
                    expect = int(wanted.group(1))
                continue
            first = number
        if line.endswith("\\"):
            pending.append(line)
            continue
        pending.append(line)
        commands.append(Command("\n".join(pending), first, expect))
        pending, expect = [], 0
    if pending:
        commands.append(Command("\n".join(pending), first, expect))
    return tuple(commands)


def runbook_paths() -> list[Path]:
    return sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")


@dataclass
class BlockRun:
    """What running one block gave: (command, exit status) in order, and the output."""

    block: Block
    statuses: list[tuple[Command, int]]
    output: str
    timed_out: bool

    def failure(self) -> str | None:
        for command, status in self.statuses:
            if status != command.expect:
                return self._describe(command, f"exited {status}, expected {command.expect}")
        if len(self.statuses) < len(self.block.commands):
            command = self.block.commands[len(self.statuses)]
            why = "timed out" if self.timed_out else "never finished (the shell exited)"
            return self._describe(command, why)
        return None

    def _describe(self, command: Command, why: str) -> str:
        return (
            f"runbooks/{self.block.runbook}:{command.line} (situation {self.block.situation}): "
            f"command {why}:\n    {command.text}\n"
            f"--- output of the block ---\n{self.output[-6000:]}"
        )


def _path_with_saga(env: dict[str, str]) -> str:
    """PATH with this interpreter's bin first, so `saga` is found without an activated venv."""
    path = env.get("PATH") or os.environ.get("PATH", "")
    return f"{Path(sys.executable).parent}{os.pathsep}{path}"


def run_block(block: Block, env: dict[str, str], cwd: Path, timeout: float = 150.0) -> BlockRun:
    """Run the block's commands in one bash, stopping at the first unexpected status."""
    status_file = cwd / f".status-{uuid.uuid4().hex[:8]}"
    parts = ["set -o pipefail"]
    for n, command in enumerate(block.commands):
        parts.append(f"echo '>>> runbooks/{block.runbook}:{command.line}' >&2")
        parts.append(command.text)
        parts.append(
            f'__rc=$?; echo "{n} $__rc" >> "$__RUNBOOK_STATUS"; '
            f'[ "$__rc" -eq {command.expect} ] || exit 99'
        )
    script = "\n".join(parts) + "\n"
    timed_out = False
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=cwd,
            env={**env, "__RUNBOOK_STATUS": str(status_file), "PATH": _path_with_saga(env)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        output = result.stdout
    except subprocess.TimeoutExpired as exc:
        timed_out = True
        raw = exc.stdout or b""
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    statuses: list[tuple[Command, int]] = []
    with contextlib.suppress(FileNotFoundError):
        for line in status_file.read_text().splitlines():
            index, status = line.split()
            statuses.append((block.commands[int(index)], int(status)))
        status_file.unlink()
    return BlockRun(block, statuses, output, timed_out)
