"""Shared pieces of the benchmarks: scratch database, queues, processes, statistics."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests/support (processes, devnet) lives in the repo

import psycopg  # noqa: E402
from kombu import Connection  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

from saga.adapters.sql import upgrade  # noqa: E402
from saga.config import Settings  # noqa: E402
from tests.support.postgres import ADMIN_URL  # noqa: E402
from tests.support.processes import Processes, SagaProcess, saga_env  # noqa: E402
from tests.support.rabbitmq import AMQP_URL, delete_topology  # noqa: E402

T = TypeVar("T")

__all__ = [
    "ADMIN_URL",
    "AMQP_URL",
    "ROOT",
    "Processes",
    "SagaProcess",
    "Stack",
    "machine",
    "percentile",
    "retrying",
    "rss_kb",
    "saga_env",
    "scratch_database",
    "statement_counts",
    "timing_records",
]


def retrying(fn: Callable[[], T], *, seconds: float = 180.0) -> T:
    """fn(), retried while the database or broker is briefly away.

    The machines are shared: other engineers' fault tests restart PostgreSQL and
    RabbitMQ. The product's processes ride that out; the bench's own calls
    (enqueue, progress polls) retry here instead of aborting the run.
    """
    from saga.ports.store import StoreUnavailable

    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except (StoreUnavailable, OperationalError, psycopg.OperationalError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database; dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    base, _, _ = ADMIN_URL.rpartition("/")

    def create() -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    retrying(create)
    url = f"{base}/{name}"
    try:
        retrying(lambda: upgrade(url))
        yield url
    finally:
        retrying(drop)


def delete_queue(name: str) -> None:
    with Connection(AMQP_URL) as connection:
        channel = connection.channel()
        with contextlib.suppress(Exception):
            channel.queue_delete(name)
        with contextlib.suppress(Exception):
            channel.exchange_delete(name)
        with contextlib.suppress(Exception):
            channel.close()


def rss_kb(pid: int) -> int:
    """Resident set size of a process and its children (kB)."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def statement_counts(directory: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for path in directory.glob("s-*.json"):
        with contextlib.suppress(ValueError, OSError):
            total.update(json.loads(path.read_text()))
    return total


def timing_records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in directory.glob("t-*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


@dataclass
class Stack:
    """The product on one scratch database and queue pair: hooked relay and workers."""

    database_url: str
    definitions: str = "bench.sagas"
    relay_poll_interval: float = 0.2
    extra: dict[str, Any] = field(default_factory=dict)
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench.")))
    settings: Settings = field(init=False)
    procs: Processes = field(init=False)

    def __post_init__(self) -> None:
        prefix = f"bench.{uuid.uuid4().hex[:8]}"
        self.settings = Settings(
            database_url=self.database_url,
            broker_url=AMQP_URL,
            definitions=self.definitions,
            step_queue=f"{prefix}.steps",
            dead_letter_queue=f"{prefix}.dead-letter",
            relay_poll_interval=self.relay_poll_interval,
            log_format="json",
            log_level="WARNING",
            **self.extra,
        )
        self.stmt_dir = self.work / "stmts"
        self.timing_dir = self.work / "timing"
        self.stmt_dir.mkdir(parents=True, exist_ok=True)
        self.timing_dir.mkdir(parents=True, exist_ok=True)
        self.procs = Processes(self.work / "logs")

    def _env(self) -> dict[str, str]:
        return {
            "BENCH_STMT_DIR": str(self.stmt_dir),
            "BENCH_TIMING_DIR": str(self.timing_dir),
            # The default the operator gets, unless the run overrides it.
            "SAGA_RELAY_POLL_INTERVAL": str(self.settings.relay_poll_interval),
        }

    def relay(self) -> SagaProcess:
        return self.procs.spawn("relay", ["bench._hooked", "relay"], self.settings, **self._env())

    def worker(self, concurrency: int = 2) -> SagaProcess:
        return self.procs.spawn(
            "worker",
            ["bench._hooked", "worker", "--concurrency", str(concurrency), "--pool", "prefork"],
            self.settings,
            **self._env(),
        )

    def spawn(self, name: str, command: list[str]) -> SagaProcess:
        return self.procs.spawn(name, command, self.settings, **self._env())

    def reset_counters(self) -> None:
        for path in [*self.stmt_dir.glob("*"), *self.timing_dir.glob("*")]:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self.procs.stop_all()
        with contextlib.suppress(Exception):
            delete_topology(AMQP_URL, self.settings)
        shutil.rmtree(self.work / "stmts", ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def spawn_naive(
    work: Path, database_url: str, queue: str, concurrency: int = 2
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env.update(
        BENCH_NAIVE_BROKER=AMQP_URL,
        BENCH_NAIVE_DB=database_url,
        BENCH_NAIVE_QUEUE=queue,
        PYTHONPATH=str(ROOT),
    )
    log = (work / "naive-worker.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.naive_app",
            "worker",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--loglevel=WARNING",
            # A node name of its own: two benchmarks running at once on one host
            # otherwise both take celery@<host>, whose pidbox queue is exclusive,
            # and the second naive worker dies with RESOURCE_LOCKED.
            f"--hostname=naive-{uuid.uuid4().hex[:8]}@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
