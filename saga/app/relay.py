"""The outbox relay: publishes committed outbox rows, then marks them published.

    with reader.claim(batch) as rows:      # rows locked for this relay only
        publisher.publish_batch(rows)      # returns once the broker confirmed all
        reader.mark_published(ids)         # same transaction as the claim

A row is marked only after its confirm, so a relay that dies between publishing
and marking leaves the rows unmarked and unlocked: the next claim publishes them
again, and the worker's inbox drops the duplicate. Two relays never publish the
same row at once because a claim locks its rows (FOR UPDATE SKIP LOCKED in the
SQL reader); which rows a claim may see at all (never skipping a row whose
transaction commits late) is the reader's business.

The loop never exits on its own: a broker or database failure is logged and
retried with capped exponential backoff; only the stop event ends it, after the
batch in hand is finished.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from saga.config import Settings
from saga.ports.broker import PendingMessage, Publisher, PublishFailed
from saga.ports.store import OutboxReader, StoreUnavailable
from saga.ports.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger("saga.relay")

# After a LISTEN wake-up, wait this long for more commits before claiming.
COALESCE_SECONDS = 0.005

# Called after a batch is confirmed and before it is marked. Tests use it to
# kill the relay at exactly that point.
AfterPublish = Callable[[Sequence[PendingMessage]], None]


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    _failures: int = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * 2**self._failures)
        self._failures += 1
        # Jitter, so relays restarted together do not hammer a recovering
        # server in lockstep.
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures


@dataclass
class RelayStats:
    batches: int = 0
    published: int = 0
    failures: int = 0
    started: float = field(default_factory=time.monotonic)


def run_relay(
    settings: Settings,
    reader: OutboxReader,
    publisher: Publisher,
    stop_event: threading.Event,
    *,
    after_publish: AfterPublish | None = None,
    backoff: Backoff | None = None,
    telemetry: Telemetry = NO_TELEMETRY,
) -> RelayStats:
    """Relay outbox rows until `stop_event` is set; returns what it did.

    Closes the publisher on the way out. Call `install_stop_signals(stop_event)`
    first in a process of its own so SIGTERM and Ctrl-C stop it cleanly. Its
    metrics endpoint, if any, is the entry point's (saga.entrypoints.metrics).
    """
    backoff = backoff or Backoff()
    stats = RelayStats()
    batch_size = settings.relay_batch_size
    log.info(
        "relay started",
        extra={"batch_size": batch_size, "poll_interval": settings.relay_poll_interval},
    )
    try:
        while not stop_event.is_set():
            try:
                count = _relay_once(reader, publisher, batch_size, after_publish)
            except Exception as exc:
                stats.failures += 1
                telemetry.relay_failed()
                delay = backoff.next()
                log.warning(
                    "relay batch failed; rows stay unpublished and are retried",
                    extra={
                        "error": f"{type(exc).__name__}: {exc}",
                        "retry_in": round(delay, 2),
                        "consecutive_failures": backoff.failures,
                    },
                    exc_info=backoff.failures == 1 or not _expected(exc),
                )
                stop_event.wait(delay)
                continue
            if backoff.failures:
                log.info("relay recovered", extra={"after_failures": backoff.failures})
                backoff.reset()
            if count:
                stats.batches += 1
                stats.published += count
                telemetry.relay_published(count)
                log.debug("batch published", extra={"count": count})
            # A full batch means more rows are probably waiting: go again at once.
            if count < batch_size:
                _idle(reader, stop_event, settings.relay_poll_interval)
    finally:
        try:
            publisher.close()
        except Exception:
            log.warning("closing the publisher failed", exc_info=True)
        try:
            reader.close()
        except Exception:
            log.warning("closing the outbox reader failed", exc_info=True)
        log.info(
            "relay stopped",
            extra={"published": stats.published, "batches": stats.batches},
        )
    return stats


def _idle(reader: OutboxReader, stop_event: threading.Event, interval: float) -> None:
    """Wait for the next poll; a reader that can hear commits (PostgreSQL LISTEN)
    ends the wait as soon as a new outbox row commits. Waits in slices of at most
    half a second so a stop request is seen promptly."""
    deadline = time.monotonic() + interval
    while not stop_event.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if reader.wait_for_rows(min(left, 0.5)):
            # Woken by a commit. Under load every step commit would wake the relay
            # for a claim of one row; a few milliseconds let the commits arriving
            # meanwhile share the claim, its round trips and its confirm wait.
            stop_event.wait(min(COALESCE_SECONDS, max(0.0, deadline - time.monotonic())))
            return


def _relay_once(
    reader: OutboxReader,
    publisher: Publisher,
    batch_size: int,
    after_publish: AfterPublish | None,
) -> int:
    with reader.claim(batch_size) as rows:
        if not rows:
            return 0
        publisher.publish_batch(rows)
        if after_publish is not None:
            after_publish(rows)
        reader.mark_published([row.id for row in rows])
        return len(rows)


def _expected(exc: Exception) -> bool:
    """Outages we know and log without a traceback after the first one."""
    return isinstance(exc, PublishFailed | StoreUnavailable | OSError | ConnectionError)


def install_stop_signals(stop_event: threading.Event) -> None:
    """Make SIGTERM and SIGINT set `stop_event` (main thread only)."""

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
