"""Failpoints: named crash points in product code, inert unless the environment arms them.

The practice of etcd's gofail and TiKV's fail-rs: the code that must survive a
crash at an exact instant says where that instant is, with a one-line
``failpoint("chain.after_prepared")``, and a test arms it from outside the
process, through the environment of a real worker it starts:

    SAGA_FAILPOINTS="chain.after_prepared=kill"
    SAGA_FAILPOINTS="chain.after_submit@undo=once*kill; worker.before_ack=sleep(2.5)"
    SAGA_FAILPOINT_MARKERS=/tmp/markers     # where once* and the hit log live

A term is ``point[@tag...]=[once*|N*]action``:

- ``point``: the failpoint's name (the list is in ``POINTS``).
- ``@tag``: fire only when the call passes every named tag (the call site passes
  e.g. the step name and the phase ``do``/``undo``), so a test can aim at the
  reversal of a chain step and leave the forward transaction alone.
- ``N*``: fire the first N times in this process (fail-rs' count prefix).
  ``once*``: fire once across every process that shares the markers directory,
  claimed by creating a marker file with O_EXCL, so a worker restarted after
  being killed at the point, or a second worker, goes through it.
- ``action``: ``kill`` (SIGKILL this process: no cleanup, no atexit, the way a
  lost machine dies), ``sleep(<seconds>)``, ``raise`` / ``raise(<text>)``
  (FailpointError), ``off``.

Every firing is logged at WARNING and, with a markers directory, appended to
``<dir>/hits.log`` (one JSON line: point, tags, action, pid) *before* the action
runs, so a test can wait for "the worker is now sleeping at the point" or see
where a process died.

Parsed once per process, on the first call (a Celery prefork child inherits the
parent's environment, so it sees the same configuration). Unset, a call costs one
global lookup and a falsy test: nothing is parsed, allocated or logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from saga.core.errors import SagaError

log = logging.getLogger("saga.failpoints")

ENV: Final = "SAGA_FAILPOINTS"
MARKERS_ENV: Final = "SAGA_FAILPOINT_MARKERS"

# The points the product declares; arming an unknown name is a configuration
# error, so a typo in a test cannot silently arm nothing.
POINTS: Final = {
    "chain.before_prepared_commit": "endorsed; the PREPARED row is written, not committed",
    "chain.after_prepared": "PREPARED (envelope, txid) committed; Submit not called",
    "chain.after_submit": "Submit returned; SUBMITTED not recorded",
    "chain.before_done": "the ledger says VALID; COMMITTED / step done not recorded",
    "worker.before_ack": "the step's transaction committed; the message is not acked",
    "watcher.before_settle_commit": "VALID commit and the step's success written, not committed",
    "watcher.after_settle_commit": "VALID commit and the step's success committed; not logged",
}


class FailpointError(SagaError, RuntimeError):
    """Raised by a failpoint armed with the ``raise`` action."""


class FailpointConfigError(SagaError, ValueError):
    pass


@dataclass
class _Term:
    point: str
    tags: frozenset[str]
    action: str
    arg: str | None
    count: int | None  # None: every time; else fires left in this process
    once: bool
    spec: str
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_TERM = re.compile(
    r"^(?P<point>[\w.]+)(?P<tags>(?:@[^@=\s]+)*)\s*=\s*"
    r"(?:(?P<count>\d+|once)\*)?(?P<action>\w+)(?:\((?P<arg>[^)]*)\))?$"
)
_ACTIONS: Final = ("off", "kill", "sleep", "raise")

_armed: dict[str, list[_Term]] | None = None
_markers: Path | None = None
_parse_lock = threading.Lock()


def parse(spec: str) -> dict[str, list[_Term]]:
    """The terms of a SAGA_FAILPOINTS value, by point name."""
    armed: dict[str, list[_Term]] = {}
    for raw in re.split(r"[;\n]", spec):
        text = raw.strip()
        if not text:
            continue
        match = _TERM.match(text)
        if match is None:
            raise FailpointConfigError(
                f"{ENV}: cannot parse {text!r}; expected point[@tag]=[N*|once*]action[(arg)]"
            )
        point, action, arg = match["point"], match["action"], match["arg"]
        if point not in POINTS:
            raise FailpointConfigError(
                f"{ENV}: unknown failpoint {point!r}; known: {sorted(POINTS)}"
            )
        if action not in _ACTIONS:
            raise FailpointConfigError(f"{ENV}: unknown action {action!r} in {text!r}")
        if action == "sleep":
            try:
                float(arg or "")
            except ValueError:
                raise FailpointConfigError(f"{ENV}: sleep needs seconds: {text!r}") from None
        count = match["count"]
        term = _Term(
            point=point,
            tags=frozenset(t for t in (match["tags"] or "").split("@") if t),
            action=action,
            arg=arg,
            count=None if count in (None, "once") else int(count),
            once=count == "once",
            spec=text,
        )
        armed.setdefault(point, []).append(term)
    return armed


def _load() -> dict[str, list[_Term]]:
    global _armed, _markers
    with _parse_lock:
        if _armed is None:
            armed = parse(os.environ.get(ENV, ""))
            directory = os.environ.get(MARKERS_ENV, "")
            markers = Path(directory) if directory else None
            if markers is None and any(t.once for ts in armed.values() for t in ts):
                raise FailpointConfigError(f"{ENV}: once* needs {MARKERS_ENV} (a directory)")
            if markers is not None:
                markers.mkdir(parents=True, exist_ok=True)
            _markers = markers
            _armed = armed
        return _armed


def reset() -> None:
    """Forget the parsed configuration; the next call reads the environment again (tests)."""
    global _armed, _markers
    with _parse_lock:
        _armed = None
        _markers = None


def failpoint(name: str, *tags: object) -> None:
    """Run the action armed for `name` (if any term's tags are all among `tags`)."""
    armed = _armed if _armed is not None else _load()
    if not armed:
        return
    for term in armed.get(name, ()):
        if term.tags and not term.tags <= {str(t) for t in tags}:
            continue
        if _claim(term):
            _fire(term, tags)
            return


def _claim(term: _Term) -> bool:
    if term.action == "off":
        return False
    if term.count is not None:
        with term.lock:
            if term.count <= 0:
                return False
            term.count -= 1
    if term.once:
        assert _markers is not None
        marker = _markers / f"{_slug(term.spec)}.once"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
    return True


def _fire(term: _Term, tags: tuple[object, ...]) -> None:
    hit = {
        "point": term.point,
        "tags": [str(t) for t in tags],
        "action": term.action,
        "arg": term.arg,
        "pid": os.getpid(),
        "at": time.time(),
    }
    log.warning("failpoint %s fired: %s", term.point, term.spec, extra={"failpoint": hit})
    if _markers is not None:
        # Written and flushed before the action: after a SIGKILL this line is the
        # only trace of where the process died.
        with (_markers / "hits.log").open("a") as f:
            f.write(json.dumps(hit) + "\n")
            f.flush()
            os.fsync(f.fileno())
    if term.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # SIGKILL is asynchronous; never run past the point meanwhile
    elif term.action == "sleep":
        time.sleep(float(term.arg or 0))
    elif term.action == "raise":
        raise FailpointError(term.arg or f"failpoint {term.point}")


def hits(markers: Path) -> list[dict[str, object]]:
    """The firings logged in a markers directory, oldest first (for tests)."""
    try:
        lines = (markers / "hits.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    out: list[dict[str, object]] = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by the kill it announced
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^\w.@-]+", "_", text)[:120]


__all__ = [
    "ENV",
    "MARKERS_ENV",
    "POINTS",
    "FailpointConfigError",
    "FailpointError",
    "failpoint",
    "hits",
    "parse",
    "reset",
]
