"""The one way tests wait: poll for evidence, fail saying what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

_UNSET = object()


class Watched(Protocol):
    """A process whose exit ends a wait at once (tests.support.processes.SagaProcess)."""

    name: str

    def alive(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    report: Callable[[], str] | None = None,
    log: Path | None = None,
    interval: float = 0.1,
    alive: Iterable[Watched] = (),
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds.

    Returns the truthy value. On timeout raises AssertionError naming `what` and the
    last value `condition` returned, with `report()` and the tail of `log` appended. If
    a process in `alive` exits meanwhile, fails at once instead of waiting out the time.
    """
    deadline = time.monotonic() + timeout
    watched = list(alive)
    last: Any = _UNSET

    def fail(headline: str) -> AssertionError:
        extra = "" if last is _UNSET else f"; last value seen: {last!r}"
        if report is not None:
            try:
                extra += "\n" + report()
            except Exception as exc:  # the report must not hide the failure
                extra += f"\n(report failed: {exc!r})"
        if log is not None and log.exists():
            extra += "\nlog tail:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        return AssertionError(headline + extra)

    while True:
        last = condition()
        if last:
            return last
        dead = [p for p in watched if not p.alive()]
        if dead:
            names = ", ".join(f"{p.name} (exit {p.returncode})" for p in dead)
            raise fail(f"{names} died while waiting for {what}")
        if time.monotonic() >= deadline:
            raise fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
