"""The metrics endpoints of the long-running processes, started by their entry points.

The relay and the watcher report through the telemetry port; whether their
process also serves what was counted (SAGA_METRICS_PORT, 0: no endpoint) is the
entry point's business, so a relay or watcher built by hand serves nothing
unless its builder starts one of these around it. A port already in use is
logged, not fatal (saga.adapters.prometheus.exposition.serve).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from saga.adapters.prometheus import collectors, exposition

if TYPE_CHECKING:
    from saga.app.watcher import WatcherStats


@contextmanager
def serving(
    port: int, role: str, *extra: object, addr: str = exposition.LOOPBACK
) -> Iterator[None]:
    """This process's metrics (and `extra` collectors) on `port` while the block runs."""
    server = exposition.serve(port, role, *extra, addr=addr)
    try:
        yield
    finally:
        if server is not None:
            server.shutdown()


def relay_metrics(port: int, addr: str = exposition.LOOPBACK) -> AbstractContextManager[None]:
    """The relay's endpoint: its counters, exported from 0 on."""
    return serving(port, "relay", addr=addr)


def watcher_metrics(
    port: int, stats: WatcherStats, addr: str = exposition.LOOPBACK
) -> AbstractContextManager[None]:
    """The watcher's endpoint: its counters and, read at scrape time, `stats`."""
    return serving(port, "watcher", collectors.watcher_collector(stats), addr=addr)
