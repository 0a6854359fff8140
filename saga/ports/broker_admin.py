"""The broker-admin port: what the application asks of the broker besides publishing,
and the dead-letter headers, which are part of the message format.

The RabbitMQ adapter implements QueueAdmin (saga.adapters.rabbitmq.queues) and
writes and reads the headers (topology, dead_letters, the Celery entry point's
dead-lettering); the DLQ policy (saga.app.dlq) reads them from here.
"""

from __future__ import annotations

from typing import Protocol

# Headers the worker adds to a message it dead-letters. Messages RabbitMQ
# dead-letters by itself (delivery limit) carry its `x-death` header instead.
DLQ_REASON = "x-saga-dlq-reason"
DLQ_ERROR = "x-saga-dlq-error"
DLQ_AT = "x-saga-dlq-at"
DLQ_EXCHANGE = "x-saga-dlq-original-exchange"
DLQ_ROUTING_KEY = "x-saga-dlq-original-routing-key"
DLQ_WORKER = "x-saga-dlq-worker"
DLQ_HEADERS = (DLQ_REASON, DLQ_ERROR, DLQ_AT, DLQ_EXCHANGE, DLQ_ROUTING_KEY, DLQ_WORKER)


class QueueAdmin(Protocol):
    """Depths of the saga queues, each asked with a deadline; None when the broker
    does not answer in time (the caller decides what an unknown depth means)."""

    def step_queue_depth(self) -> int | None:
        """Messages waiting in the step queue (the sweeper's backlog)."""
        ...

    def dead_letter_depth(self) -> int | None:
        """Messages in the dead-letter queue."""
        ...
