"""Multiprocess mode for Celery prefork workers: the PROMETHEUS_MULTIPROC_DIR directory, its dead
processes' files, and the worker main process's endpoint summing them."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import Metric


from saga.adapters.prometheus.exposition import LOOPBACK, start_endpoint

log = logging.getLogger("saga.metrics")


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


_TEMP_PREFIX = "saga-metrics-"


def prepare_multiprocess() -> tuple[Path, bool]:
    """Make sure PROMETHEUS_MULTIPROC_DIR names a directory; call before anything counts.

    Returns the directory and whether we created it (then we remove it at exit).
    An operator-given directory is used as it is: give each `saga worker` its own
    (counts of every process writing there are summed). Either way, what a worker
    that was killed left behind goes now (see drop_dead_files, drop_dead_directories).
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        drop_dead_files(path)
        return path, False
    drop_dead_directories(Path(tempfile.gettempdir()))
    # The owner's pid in the name: a later worker can tell a dead one's directory.
    path = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True


def drop_dead_files(directory: Path) -> None:
    """Remove the files of processes that are gone, before a worker starts.

    prometheus_client sums every file in the directory; a previous worker's
    counters (one killed before its exit hook) would be added to the new one's
    forever. Dropping them is a counter reset, which Prometheus' rate() expects
    of a restarted process. Files of live processes (another worker given the
    same directory) stay.
    """
    for path in directory.glob("*.db"):
        pid = _pid_of(path.stem)
        if pid is not None and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def drop_dead_directories(parent: Path) -> None:
    """Remove the temporary directories of this user's workers that died unannounced."""
    uid = os.getuid()
    for path in parent.glob(f"{_TEMP_PREFIX}*-*"):
        owner = path.name[len(_TEMP_PREFIX) :].split("-", 1)[0]
        try:
            mine = path.is_dir() and path.stat().st_uid == uid
        except OSError:
            continue
        if mine and owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)


def _pid_of(stem: str) -> int | None:
    """The pid in a multiprocess file name (counter_123, gauge_livesum_123)."""
    text = stem.rsplit("_", 1)[-1]
    return int(text) if text.isdigit() else None


def serve_multiprocess(port: int, directory: Path, addr: str = LOOPBACK) -> Any:
    """The worker main process's endpoint: the sum over every pool process's files."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DeadPidSweep(directory))
    MultiProcessCollector(registry, path=str(directory))
    return start_endpoint(port, addr, registry, "worker", dir=str(directory))


def on_worker_process_shutdown(**kwargs: Any) -> None:
    """Celery's worker_process_shutdown handler (runs in the exiting pool process)."""
    process_exited(kwargs.get("pid"))


def process_exited(pid: int | None = None) -> None:
    """Drop a pool process's live gauges (its counters stay: totals must not drop)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid(), directory)


class _DeadPidSweep:
    """At each scrape, drops the live gauges of pool processes that died unannounced.

    A child SIGKILLed mid-step never runs its shutdown hook; its +1 in
    saga_steps_in_progress would otherwise stay in the sum forever.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        for path in self._dir.glob("gauge_live*_*.db"):
            pid = _pid_of(path.stem)
            if pid is not None and not _alive(pid):
                process_exited(pid)
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def worker_endpoint(port: int, addr: str = LOOPBACK) -> Iterator[None]:
    """Multiprocess metrics for a prefork worker, served by its main process; 0: none.

    Entered before the pool forks, so every pool process writes its own files
    into the directory the main process sums at each scrape.
    """
    if not port:
        yield
        return
    directory, ours = prepare_multiprocess()
    server = serve_multiprocess(port, directory, addr)
    try:
        yield
    finally:
        if server is not None:
            server.shutdown()
        if ours:
            remove_directory(directory)
