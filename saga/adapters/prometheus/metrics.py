"""Prometheus metrics: what each process counts, and what is read at scrape time.

Nothing is created at import: `prometheus_client` itself is imported on first
use, because it picks its value storage (in memory, or one mmap file per
process under PROMETHEUS_MULTIPROC_DIR) when it is imported, and a worker sets
that directory at start, before its pool forks.

Who exposes what (each process only what it does; a metric is registered at
its first use, see Instruments):

- workers (`saga worker --metrics-port`): step latency, results, retries,
  compensations, chain decisions, sweeper passes, in multiprocess mode (the pool
  children write, the main process serves the sum);
- relay and watcher (SAGA_METRICS_PORT, each on its own port): their counters,
  the watcher's commit latency;
- the API (`GET /metrics`, bearer token): sagas it enqueued, and the store and
  broker gauges read at scrape time (sagas by name and status, chain
  transactions in flight, outbox lag, DLQ depth), the same on every API instance
  (aggregate them with max, not sum).

Endpoints listen on SAGA_METRICS_ADDRESS (loopback by default): they have no
authentication. A counter restarts from 0 with its process; Prometheus'
rate()/increase() count that as a reset, per scrape target.

Call sites use the small functions at the bottom (one line each); they never
raise into the code they measure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import Metric

    from saga.config import Settings
    from saga.core.messages import Event
    from saga.core.state import SagaState
    from saga.ports.store import LedgerAttemptRecord, UnitOfWorkFactory

log = logging.getLogger("saga.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Steps are database transactions (milliseconds) or ledger round trips (seconds).
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A block is cut every few seconds; a commit seen after minutes is an incident.
COMMIT_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


T = TypeVar("T")


class _Metric(Generic[T]):
    """An instrument created and registered on first use (see Instruments)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Instruments | None, owner: type) -> T:
        if obj is None:
            raise AttributeError(self.name)
        return obj.get(self.name, self._make)


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> Callable[[], Counter]:
    def make() -> Counter:
        from prometheus_client import Counter

        return Counter(name, doc, list(labels))

    return make


def _histogram(
    name: str, doc: str, labels: Iterable[str], buckets: Iterable[float]
) -> Callable[[], Histogram]:
    def make() -> Histogram:
        from prometheus_client import Histogram

        return Histogram(name, doc, list(labels), buckets=tuple(buckets))

    return make


def _live_gauge(name: str, doc: str, labels: Iterable[str]) -> Callable[[], Gauge]:
    def make() -> Gauge:
        from prometheus_client import Gauge

        return Gauge(name, doc, list(labels), multiprocess_mode="livesum")

    return make


class Instruments:
    """The process's metric objects, each registered when the process first uses it.

    So a process exports only the metrics of the work it does: a relay has no
    sweeper counter, the API no relay counter. A zero exported by a process that
    never does the work would be summed with the real one and read as a second
    relay that published nothing.
    """

    step_seconds = _Metric(
        _histogram(
            "saga_step_duration_seconds",
            "Time to handle one step message, by step kind and phase (do/undo)",
            ["kind", "phase"],
            STEP_BUCKETS,
        )
    )
    steps_in_progress = _Metric(
        _live_gauge("saga_steps_in_progress", "Step messages being handled now", ["kind"])
    )
    step_results = _Metric(
        _counter(
            "saga_step_results_total",
            "Step and compensation outcomes recorded on sagas",
            ["saga", "step", "phase", "result"],
        )
    )
    step_retries = _Metric(
        _counter(
            "saga_step_retries_total",
            "Failed step or compensation attempts that were scheduled again",
            ["saga", "step", "phase"],
        )
    )
    compensations = _Metric(
        _counter(
            "saga_compensations_total",
            "Steps compensated (their compensation succeeded)",
            ["saga", "step"],
        )
    )
    sagas_finished = _Metric(
        _counter(
            "saga_sagas_finished_total", "Sagas that reached a terminal status", ["saga", "status"]
        )
    )
    enqueued = _Metric(_counter("saga_enqueued_total", "Sagas started", ["saga"]))
    inline_steps = _Metric(
        _counter(
            "saga_inline_steps_total",
            "Step messages a worker took from the outbox and ran itself, never published",
            ["saga", "step", "phase"],
        )
    )
    chain_decisions = _Metric(
        _counter(
            "saga_chain_verify_total",
            "Verify passes of chain steps, by the decision taken",
            ["decision"],
        )
    )
    chain_transactions = _Metric(
        _counter(
            "saga_chain_transactions_total",
            "Ledger transactions prepared (new txid) or resubmitted (same envelope)",
            ["event"],
        )
    )
    ledger_waits = _Metric(
        _counter(
            "saga_chain_ledger_waits_total",
            "Chain steps that found the ledger unreachable and wait (each look counts once), "
            "by what the ledger answered and whether the step waits on or went to an operator",
            ["kind", "outcome"],
        )
    )
    commit_seconds = _Metric(
        _histogram(
            "saga_chain_commit_latency_seconds",
            "From submit (or prepare, if the submit was not recorded) to the commit the "
            "watcher saw",
            ["result"],
            COMMIT_BUCKETS,
        )
    )
    relay_published = _Metric(
        _counter("saga_relay_published_messages_total", "Outbox rows published with a confirm")
    )
    relay_batches = _Metric(_counter("saga_relay_batches_total", "Outbox batches published"))
    relay_failures = _Metric(
        _counter("saga_relay_failures_total", "Relay batches that failed (retried with backoff)")
    )
    sweeper_redrives = _Metric(
        _counter("saga_sweeper_redrives_total", "Stuck sagas re-driven through the verify path")
    )
    sweeper_stuck = _Metric(
        _counter("saga_sweeper_marked_stuck_total", "Sagas marked for an operator by the sweeper")
    )
    sweeper_attempts = _Metric(
        _counter(
            "saga_sweeper_attempts_total",
            "Unsettled ledger attempts of terminal sagas the sweeper settled or gave up",
            ["result"],
        )
    )

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str, make: Callable[[], T]) -> T:
        made: T | None = self._made.get(name)
        if made is None:
            # Two threads registering one name would collide in the registry.
            with self._lock:
                made = self._made.get(name)
                if made is None:
                    made = self._made[name] = make()
        return made

    def declare(self, names: Iterable[str]) -> None:
        """Register these now, so their unlabelled counters are exported from 0 on."""
        for name in names:
            getattr(self, name)


# What a role's endpoint exports from its start (unlabelled counters: a series that
# appears only at its first increment loses that increment to rate()).
ROLE_METRICS: dict[str, tuple[str, ...]] = {
    "relay": ("relay_published", "relay_batches", "relay_failures"),
}

_lock = threading.Lock()
_instruments: Instruments | None = None


def instruments() -> Instruments:
    """The process's instruments; each metric is registered at its first use."""
    global _instruments
    if _instruments is None:
        with _lock:
            if _instruments is None:
                _instruments = Instruments()
    return _instruments


# -- call sites: one line each, never raising --------------------------------------------


@contextmanager
def step_timer(kind: str, phase: object) -> Iterator[None]:
    m = instruments()
    m.steps_in_progress.labels(kind).inc()
    start = time.perf_counter()
    try:
        yield
    finally:
        m.steps_in_progress.labels(kind).dec()
        m.step_seconds.labels(kind, str(phase)).observe(time.perf_counter() - start)


def event_applied(before: SagaState, after: SagaState, event: Event) -> None:
    """Count what one accepted event did to a saga (called in the step's transaction,
    so a rolled-back transaction may still be counted; counts are for rates, the
    store is the record)."""
    try:
        _count_event(before, after, event)
    except Exception:  # a metric must never fail a step
        log.debug("counting an event failed", exc_info=True)


def _count_event(before: SagaState, after: SagaState, event: Event) -> None:
    from saga.core.messages import (
        CompensationFailed,
        CompensationSucceeded,
        StepFailed,
        StepSucceeded,
    )

    m = instruments()
    name = before.name
    if isinstance(event, StepSucceeded | StepFailed):
        result = "succeeded" if isinstance(event, StepSucceeded) else "failed"
        m.step_results.labels(name, event.step, "do", result).inc()
        if isinstance(event, StepFailed):
            i = before.step_index(event.step)
            if after.steps[i].attempts > before.steps[i].attempts:
                m.step_retries.labels(name, event.step, "do").inc()
    elif isinstance(event, CompensationSucceeded | CompensationFailed):
        result = "succeeded" if isinstance(event, CompensationSucceeded) else "failed"
        m.step_results.labels(name, event.step, "undo", result).inc()
        if isinstance(event, CompensationSucceeded):
            m.compensations.labels(name, event.step).inc()
        else:
            i = before.step_index(event.step)
            if after.steps[i].compensation_attempts > before.steps[i].compensation_attempts:
                m.step_retries.labels(name, event.step, "undo").inc()
    if after.status != before.status and after.status.terminal:
        m.sagas_finished.labels(name, str(after.status)).inc()


def enqueued(saga: str) -> None:
    instruments().enqueued.labels(saga).inc()


def chain_decision(decision: object) -> None:
    instruments().chain_decisions.labels(type(decision).__name__).inc()


def chain_transaction(event: str, count: int = 1) -> None:
    if count:
        instruments().chain_transactions.labels(event).inc(count)


def ledger_wait(kind: str, gave_up: bool) -> None:
    instruments().ledger_waits.labels(kind, "operator" if gave_up else "waiting").inc()


def commit_seen(record: LedgerAttemptRecord, valid: bool) -> None:
    since = record.submitted_at or record.created_at
    if since is None:
        return
    seconds = (datetime.now(UTC) - since).total_seconds()
    instruments().commit_seconds.labels("valid" if valid else "invalid").observe(max(seconds, 0))


def inline_step(saga: str, step: str, phase: object) -> None:
    instruments().inline_steps.labels(saga, step, str(phase)).inc()


def relay_batch(count: int) -> None:
    m = instruments()
    m.relay_batches.inc()
    m.relay_published.inc(count)


def relay_failure() -> None:
    instruments().relay_failures.inc()


# -- scrape-time gauges: store and broker ------------------------------------------------


class StoreCollector:
    """Reads the store (and the broker's DLQ depth) when Prometheus scrapes.

    Three cheap queries: one GROUP BY over sagas (name, status), a count of
    unsettled ledger attempts (a partial index holds only those), and the oldest
    due unpublished outbox row (a partial index too). The DLQ depth is a passive
    queue declare with a deadline; if the broker does not answer the gauge is
    left out of this scrape rather than failing the whole scrape.
    """

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        *,
        broker_url: str | None = None,
        dead_letter_queue: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        self._uow = uow_factory
        self._broker_url = broker_url
        self._dlq = dead_letter_queue
        self._timeout = timeout

    def describe(self) -> list[Metric]:
        # Describing by collecting would query the database at registration.
        return []

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("saga_store_up", "1 if the store answered this scrape")
        try:
            counts, unsettled, lag, unpublished, waiting = self._read_store()
        except Exception as exc:
            log.warning("metrics: reading the store failed", extra={"error": repr(exc)})
            up.add_metric([], 0)
            yield up
        else:
            up.add_metric([], 1)
            yield up
            sagas = GaugeMetricFamily(
                "saga_sagas", "Sagas in the store by name and status", labels=["saga", "status"]
            )
            for (name, status), count in sorted(counts.items()):
                sagas.add_metric([name, status], count)
            yield sagas
            waits = GaugeMetricFamily(
                "saga_sagas_waiting_for_ledger",
                "Running or compensating sagas whose current chain step waits for an "
                "unreachable ledger",
                labels=["saga"],
            )
            for name, count in sorted(waiting.items()):
                waits.add_metric([name], count)
            yield waits
            flight = GaugeMetricFamily(
                "saga_chain_transactions_in_flight",
                "Ledger attempts not yet settled (commit code unknown), by state",
                labels=["state"],
            )
            for state in ("prepared", "submitted"):
                flight.add_metric([state], unsettled.get(state, 0))
            yield flight
            yield GaugeMetricFamily(
                "saga_outbox_lag_seconds",
                "Age of the oldest due, unpublished outbox row (0 when none waits)",
                value=lag or 0.0,
            )
            yield GaugeMetricFamily(
                "saga_outbox_unpublished", "Outbox rows not yet published", value=unpublished
            )
        if self._broker_url and self._dlq:
            depth = queue_depth(self._broker_url, self._dlq, self._timeout)
            if depth is not None:
                yield GaugeMetricFamily(
                    "saga_dead_letter_messages",
                    "Messages waiting in the dead-letter queue",
                    value=depth,
                )

    def _read_store(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[str, int], float | None, int, dict[str, int]]:
        from sqlalchemy import func, select

        from saga.adapters.sql.outbox import SqlOutboxReader
        from saga.adapters.sql.tables import ledger_attempts, outbox

        with self._uow() as uow:
            counts = uow.sagas.count_by_status()
            waiting = uow.sagas.count_waiting_for_ledger()
            session = uow.session
            rows = session.execute(
                select(ledger_attempts.c.state, func.count())
                .where(ledger_attempts.c.state != "committed")
                .group_by(ledger_attempts.c.state)
            )
            unsettled = {str(state): int(n) for state, n in rows}
            unpublished = int(
                session.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
                ).scalar_one()
            )
            engine = session.get_bind()
        lag = SqlOutboxReader(engine).oldest_unpublished_age()
        return counts, unsettled, lag, unpublished, waiting


def queue_depth(broker_url: str, queue: str, timeout: float) -> int | None:
    """Messages in `queue`, or None if the broker does not answer within `timeout`.

    In a thread of its own: a broker that accepts the connection and then says
    nothing would otherwise hold the scrape past Prometheus' own deadline.
    """
    result: list[int] = []

    def ask() -> None:
        from kombu import Connection

        from saga.adapters.rabbitmq import embedded

        embedded.register()
        try:
            with Connection(broker_url, connect_timeout=timeout) as connection:
                channel = connection.channel()
                try:
                    result.append(int(channel.queue_declare(queue, passive=True).message_count))
                finally:
                    channel.close()
        except Exception as exc:
            log.info("metrics: queue depth unknown", extra={"queue": queue, "error": repr(exc)})

    thread = threading.Thread(target=ask, name="metrics-queue-depth", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


# -- exposition ---------------------------------------------------------------------------


def store_registry(
    settings: Settings, uow_factory: UnitOfWorkFactory, sagas: Iterable[str] = ()
) -> CollectorRegistry:
    """A registry with this process's metrics and the store/broker gauges (for the API).

    `sagas`: the names the API enqueues, exported from 0 so the first enqueue after
    a start is an increase Prometheus sees.
    """
    from prometheus_client import REGISTRY, CollectorRegistry

    started = instruments().enqueued
    for name in sagas:
        started.labels(name)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Chain(REGISTRY))
    registry.register(
        StoreCollector(
            uow_factory,
            broker_url=settings.broker_url,
            dead_letter_queue=settings.dead_letter_queue,
            timeout=settings.metrics_timeout,
        )
    )
    return registry


class _Chain:
    """Exposes another registry's metrics (the process-wide default one) in ours."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return list(self._inner.collect())


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST


LOOPBACK = "127.0.0.1"


def serve(port: int, role: str, *extra: Any, addr: str = LOOPBACK) -> Any:
    """Serve this process's metrics (plus `extra` collectors) on `port`; 0: nothing.

    Without authentication, hence on loopback unless SAGA_METRICS_ADDRESS says
    otherwise. A port already in use is logged, not fatal: a relay or watcher
    that cannot expose metrics must still do its work.
    """
    if not port:
        return None
    from prometheus_client import REGISTRY, CollectorRegistry

    instruments().declare(ROLE_METRICS.get(role, ()))
    registry: Any = REGISTRY
    if extra:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Chain(REGISTRY))
        for collector in extra:
            registry.register(collector)
    return _start(port, addr, registry, role)


def _start(port: int, addr: str, registry: Any, role: str, **fields: str) -> Any:
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.error(
            "metrics endpoint not started; give this process a free port (SAGA_METRICS_PORT)",
            extra={"role": role, "address": addr, "port": port, "error": str(exc)},
        )
        return None
    log.info("metrics endpoint", extra={"role": role, "address": addr, "port": port, **fields})
    return server


# -- multiprocess mode (Celery prefork workers) ----------------------------------------------

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
    return _start(port, addr, registry, "worker", dir=str(directory))


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


WatcherStatsSource = Callable[[], dict[str, Any]]


class StatsCollector:
    """Exposes a process's own counters object (the watcher's) at scrape time."""

    def __init__(self, prefix: str, source: WatcherStatsSource, gauges: Iterable[str]) -> None:
        self._prefix = prefix
        self._source = source
        self._gauges = frozenset(gauges)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, value in sorted(self._source().items()):
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            full = f"{self._prefix}_{name}"
            if name in self._gauges:
                yield GaugeMetricFamily(full, f"watcher {name}", value=value)
            else:
                yield CounterMetricFamily(full, f"watcher {name}", value=value)


def watcher_collector(stats: Any) -> StatsCollector:
    return StatsCollector(
        "saga_watcher", stats.as_dict, ("in_flight", "tracked", "max_in_flight_seen", "elapsed")
    )


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


class ApiScrape:
    """GET /metrics of the API: its own metrics and the store/broker gauges.

    The registry is built at the first scrape, not with the app. `sagas`: the
    names this API enqueues (their saga_enqueued_total starts at 0).
    """

    def __init__(
        self, settings: Settings, uow_factory: UnitOfWorkFactory, sagas: Iterable[str] = ()
    ) -> None:
        self._settings = settings
        self._uow = uow_factory
        self._sagas = tuple(sagas)
        self._registry: CollectorRegistry | None = None
        self._lock = threading.Lock()

    def response(self) -> Any:
        from starlette.responses import Response

        with self._lock:
            if self._registry is None:
                self._registry = store_registry(self._settings, self._uow, self._sagas)
        body, content_type = render(self._registry)
        return Response(body, media_type=content_type)
