"""Exposition: rendering a registry and serving it over HTTP (relay, watcher, API)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from saga.config import Settings
    from saga.ports.store import UnitOfWorkFactory

from saga.adapters.prometheus.collectors import _Chain, store_registry
from saga.adapters.prometheus.metrics import ROLE_METRICS, instruments

log = logging.getLogger("saga.metrics")


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
    return start_endpoint(port, addr, registry, role)


def start_endpoint(port: int, addr: str, registry: Any, role: str, **fields: str) -> Any:
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
