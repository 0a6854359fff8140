"""Prometheus metrics: what each process counts (counters, histograms, live gauges).

What is read at scrape time is in saga.adapters.prometheus.collectors, serving in
.exposition, prefork workers' multiprocess directory in .multiprocess.

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

Call sites use the small functions at the bottom (one line each). Only
`event_applied` catches its own errors (it runs inside a step's transaction);
the others do not: an error of prometheus_client (a wrong label count, the
library missing, a broken multiprocess directory) reaches their caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

    from saga.core.messages import Event
    from saga.core.state import SagaState
    from saga.ports.store import LedgerAttemptRecord

log = logging.getLogger("saga.metrics")


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
    fused_steps = _Metric(
        _counter(
            "saga_fused_steps_total",
            "Steps run and committed in the transaction of the step before them; their"
            " messages were never written",
            ["saga", "step", "phase"],
        )
    )
    fused_rollbacks = _Metric(
        _counter(
            "saga_fused_step_runs_redone_total",
            "Step runs rolled back because a later step of their fused transaction failed,"
            " then run again one step per transaction; labelled by the failing step",
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


# -- call sites: one line each (only event_applied swallows its errors) ------------------


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


def fused_step(saga: str, step: str, phase: object) -> None:
    instruments().fused_steps.labels(saga, step, str(phase)).inc()


def fused_run_rolled_back(saga: str, step: str, phase: object, runs: int) -> None:
    instruments().fused_rollbacks.labels(saga, step, str(phase)).inc(runs)


def relay_batch(count: int) -> None:
    m = instruments()
    m.relay_batches.inc()
    m.relay_published.inc(count)


def relay_failure() -> None:
    instruments().relay_failures.inc()
