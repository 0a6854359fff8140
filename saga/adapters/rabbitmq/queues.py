"""Queue depths, asked of the broker with a passive queue.declare (kombu): never creates,
changes or consumes anything. `saga queues` reports the product's queues; the
metrics collector and the sweeper read one depth with a deadline."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from saga.adapters.rabbitmq.topology import Topology
from saga.config import Settings
from saga.core.errors import SagaError

log = logging.getLogger("saga.metrics")


@dataclass(frozen=True)
class QueueStats:
    role: str  # "steps" or "dead-letter"
    queue: str
    setting: str  # the SAGA_* variable that names it
    exists: bool
    messages: int | None  # ready messages; those a consumer holds unacked are not counted
    consumers: int | None


class BrokerUnavailable(SagaError):
    """RabbitMQ did not answer; the message says what to check."""


def queue_stats(s: Settings, *, connect_timeout: float = 5.0) -> list[QueueStats]:
    """Passive declares of the product's queues (steps first, then the DLQ)."""
    import amqp.exceptions
    from kombu import Connection

    topology = Topology.from_settings(s)
    wanted = (
        ("steps", topology.step_queue, "SAGA_STEP_QUEUE"),
        ("dead-letter", topology.dead_letter_queue, "SAGA_DEAD_LETTER_QUEUE"),
    )
    where = s.redacted()["SAGA_BROKER_URL"]
    found: list[QueueStats] = []
    with Connection(s.broker_url, connect_timeout=connect_timeout) as connection:
        try:
            connection.ensure_connection(max_retries=1)
        except Exception as exc:
            raise BrokerUnavailable(
                f"cannot reach RabbitMQ at {where} ({exc}); check that it runs and "
                "SAGA_BROKER_URL (or --broker) points at it"
            ) from None
        for role, name, setting in wanted:
            # A channel per queue: a passive declare of a missing queue closes its channel.
            channel = connection.channel()
            try:
                ok = channel.queue_declare(name, passive=True)
                found.append(
                    QueueStats(role, name, setting, True, int(ok.message_count), ok.consumer_count)
                )
            except amqp.exceptions.NotFound:
                found.append(QueueStats(role, name, setting, False, None, None))
            except Exception as exc:
                raise BrokerUnavailable(
                    f"RabbitMQ at {where} did not answer for queue {name!r} ({exc})"
                ) from None
            finally:
                if channel.is_open:
                    channel.close()
    return found


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


class RabbitQueueAdmin:
    """The broker-admin port's queue depths (saga.ports.broker_admin.QueueAdmin): one
    passive declare each, with the metrics deadline (SAGA_METRICS_TIMEOUT)."""

    def __init__(self, settings: Settings) -> None:
        topology = Topology.from_settings(settings)
        self._url = settings.broker_url
        self._step_queue = topology.step_queue
        self._dead_letter_queue = topology.dead_letter_queue
        self._timeout = settings.metrics_timeout

    def step_queue_depth(self) -> int | None:
        return queue_depth(self._url, self._step_queue, self._timeout)

    def dead_letter_depth(self) -> int | None:
        return queue_depth(self._url, self._dead_letter_queue, self._timeout)
