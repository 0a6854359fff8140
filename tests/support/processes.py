"""Real `saga worker` and `saga relay` processes for fault tests.

Each process is the same command an operator runs (`python -m saga worker`,
`python -m saga relay`), configured only through SAGA_* environment variables
built from a `Settings`, started in a session of its own so a test can SIGKILL
the whole process group (a Celery worker's main process and its pool children)
the way a lost machine would. Output goes to a log file per process, and
`Processes.report()` gives the tail of every log for a failing test.

    with Processes(tmp_path) as procs:
        relay = procs.relay(settings)
        worker = procs.worker(settings, concurrency=2)
        ...
        worker.kill()            # SIGKILL the process group, no cleanup
        procs.worker(settings)   # a fresh one, as a supervisor would start

Waiting on them: tests.support.waiting.wait_for (alive=[...] fails at once when one dies).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from saga.config import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def saga_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for a child process: every Settings field as SAGA_*.

    Unlike `Settings.redacted()`, secrets are passed as they are (the child
    needs them). `extra` adds or overrides variables (e.g. SAGA_RELAY_POLL_INTERVAL).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    for f in fields(settings):
        env[PREFIX + f.name.upper()] = str(getattr(settings, f.name))
    # The test tree (fault saga definitions) must import in the child.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class SagaProcess:
    """One child process with its own process group and log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _log: Any = field(default=None, repr=False)
    _done: bool = field(default=False, repr=False)

    def start(self) -> SagaProcess:
        self._log = self.log_path.open("ab")
        self._log.write(f"--- start {self.name}: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children)."""
        if self.popen is None or self._done:
            return
        if self.popen.poll() is not None:  # already dead: clean up its group once
            self._finish()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)
        self._note(f"SIGKILLed (exit {self.popen.returncode})")
        self._finish()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (warm shutdown), then SIGKILL the group if it does not exit in time."""
        if self.popen is None:
            return None
        if self._done:
            return self.popen.returncode
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._note(f"did not stop within {timeout:.0f}s of SIGTERM; SIGKILL")
                self.kill()
        self._finish()
        return self.popen.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self) -> Iterator[dict[str, Any]]:
        """The JSON log lines (SAGA_LOG_FORMAT=json); other lines are skipped."""
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _note(self, text: str) -> None:
        if self._log is not None and not self._log.closed:
            self._log.write(f"--- {self.name}: {text}\n".encode())
            self._log.flush()

    def _finish(self) -> None:
        """Once, right after the group leader exited: SIGKILL pool children it left
        behind, close the log. Never again later: once the group is empty its id
        may be reused by an unrelated process group."""
        assert self.popen is not None
        if not self._done:
            self._done = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()


class Processes:
    """Starts workers and relays for one test; stops every one of them at exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[SagaProcess] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def spawn(self, name: str, command: list[str], settings: Settings, **env: str) -> SagaProcess:
        n = sum(1 for p in self.started if p.name.split("#")[0] == name)
        label = f"{name}#{n + 1}"
        process = SagaProcess(
            name=label,
            argv=[sys.executable, "-m", *command],
            env=saga_env(settings, **env),
            log_path=self.log_dir / f"{label.replace('#', '-')}.log",
        )
        self.started.append(process)
        return process.start()

    def worker(
        self, settings: Settings, *, concurrency: int = 2, pool: str = "prefork", **env: str
    ) -> SagaProcess:
        """`saga worker` (Celery, prefork pool by default)."""
        return self.spawn(
            "worker",
            ["saga", "worker", "--concurrency", str(concurrency), "--pool", pool],
            settings,
            **env,
        )

    def relay(self, settings: Settings, **env: str) -> SagaProcess:
        """`saga relay`."""
        env.setdefault("SAGA_RELAY_POLL_INTERVAL", "0.05")
        return self.spawn("relay", ["saga", "relay"], settings, **env)

    def module(self, name: str, module: str, settings: Settings, **env: str) -> SagaProcess:
        """`python -m <module>` with the settings' environment (test-only processes)."""
        return self.spawn(name, [module], settings, **env)

    def running(self) -> list[SagaProcess]:
        return [p for p in self.started if p.alive()]

    def stop_all(self, timeout: float = 30.0) -> None:
        for process in reversed(self.started):
            if process.popen is not None and process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGTERM)
        for process in reversed(self.started):
            process.stop(timeout=timeout)

    def report(self, lines: int = 30) -> str:
        parts = []
        for p in self.started:
            state = "running" if p.alive() else f"exited {p.returncode}"
            parts.append(f"===== {p.name} (pid {p.popen.pid if p.popen else '-'}, {state})")
            parts.append(p.tail(lines))
        return "\n".join(parts)


@dataclass
class Deadline:
    seconds: float
    start: float = field(default_factory=time.monotonic)

    @property
    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    @property
    def passed(self) -> bool:
        return self.left <= 0


def read_marker(path: Path) -> Mapping[str, Any] | None:
    """A marker file written by a fault step (JSON), or None while it is absent/partial."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data: Mapping[str, Any] = json.loads(text)
    except ValueError:
        return None
    return data


__all__ = [
    "ROOT",
    "Deadline",
    "Processes",
    "SagaProcess",
    "read_marker",
    "saga_env",
]
