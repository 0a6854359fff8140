"""Start, stop and kill the network's processes by pid.

Pids live in the state file, not only in this process's memory, so a CLI call or a
second test process can stop or restart a member the launcher started. Every
process gets its own session: a Ctrl-C in the launcher's terminal reaches the
launcher only, which then stops the members in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saga_devnet.chaincode_launcher import wait_listening
from saga_fabricnet.state import StateFile

STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class MemberSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    # The member is up once this port accepts connections.
    ready_port: int
    cwd: Path
    # Starts the process and waits until it listens, instead of argv/env (the chaincode
    # is started by saga_devnet's own launcher).
    launch: Callable[[], subprocess.Popen[bytes]] | None = None


def _proc_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name; Z is a zombie (dead).
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _marker(name: str) -> str:
    """What a member's command line contains: its binary, or the chaincode module."""
    for binary in ("orderer", "peer"):
        if name.startswith(binary):
            return binary
    return name


class ProcessTable:
    def __init__(self, state_file: StateFile) -> None:
        self._state = state_file
        # Our own children, kept so that they are reaped (no zombies) when they exit.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, spec: MemberSpec, *, listen_timeout: float = 60.0) -> int:
        if self.running(spec.name):
            raise RuntimeError(f"{spec.name} is already running (pid {self.pid(spec.name)})")
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        if spec.launch is not None:
            proc = spec.launch()
            self._children[proc.pid] = proc
            with self._state.update() as state:
                state.pids[spec.name] = proc.pid
            return proc.pid
        with spec.log.open("ab") as out:
            out.write(f"\n---- {time.strftime('%H:%M:%S')} starting {spec.name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                spec.argv,
                env=spec.env,
                cwd=spec.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        with self._state.update() as state:
            state.pids[spec.name] = proc.pid
        try:
            wait_listening(proc, spec.ready_port, spec.name, spec.log, listen_timeout)
        except BaseException:
            self.signal(spec.name, signal.SIGKILL)
            raise
        return proc.pid

    def pid(self, name: str) -> int | None:
        return self._state.load().pids.get(name)

    def running(self, name: str) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        # A pid from an earlier run may since belong to an unrelated process.
        return _proc_alive(pid) and _marker(name) in _cmdline(pid)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        child = self._children.get(pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child is not None:
                if child.poll() is not None:
                    return True
            elif not _proc_alive(pid):
                return True
            time.sleep(0.05)
        return False

    def signal(self, name: str, sig: signal.Signals, timeout: float = STOP_TIMEOUT) -> bool:
        """Send `sig` to the member and wait until it has exited; SIGKILL after `timeout`.
        Returns False if it was not running."""
        pid = self.pid(name)
        if pid is None or not self.running(name):
            self._forget(name, pid)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if not self._wait_gone(pid, timeout) and sig != signal.SIGKILL:
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, timeout)
        self._forget(name, pid)
        return True

    def _forget(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self._children.pop(pid, None)
        with self._state.update() as state:
            if state.pids.get(name) == pid:
                state.pids.pop(name, None)

    def stop(self, name: str) -> bool:
        return self.signal(name, signal.SIGTERM)

    def kill(self, name: str) -> bool:
        return self.signal(name, signal.SIGKILL)
