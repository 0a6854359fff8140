"""Scrape-time collectors: the store and broker gauges (for the API) and the watcher's own stats."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from saga.config import Settings
    from saga.ports.store import UnitOfWorkFactory

from saga.adapters.prometheus.metrics import instruments
from saga.adapters.rabbitmq.queues import queue_depth

log = logging.getLogger("saga.metrics")


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
        with self._uow() as uow:
            counts = uow.sagas.count_by_status()
            waiting = uow.sagas.count_waiting_for_ledger()
            unsettled = uow.ledger_attempts.count_unsettled()
            unpublished = uow.outbox.count_unpublished()
            lag = uow.outbox.oldest_unpublished_age()
        return counts, unsettled, lag, unpublished, waiting


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
