"""Moving a poison message to the dead-letter queue, with the reason in its headers.

The original body and headers are kept, so an operator can read what arrived and,
once the cause is fixed, publish it back to the step exchange. The publish is
confirmed (the app's transport option `confirm_publish`) and mandatory before the
caller acks the original; if it fails the caller must not ack.

A message `saga dlq replay` sent back carries its replay count and history
(saga.app.dlq.CARRIED_HEADERS); a new dead-lettering keeps them, so the operator sees
a loop. The consumer passes the message's own headers; a task passes only the
task headers it rebuilds, so those two are taken from the task's request.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from saga.adapters.rabbitmq.topology import (
    DLQ_AT,
    DLQ_ERROR,
    DLQ_EXCHANGE,
    DLQ_REASON,
    DLQ_ROUTING_KEY,
    DLQ_WORKER,
    Topology,
)
from saga.app.dlq import CARRIED_HEADERS

log = logging.getLogger("saga.worker.dlq")

MAX_REASON = 2000
_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def publish_dead_letter(
    app: Celery,
    topology: Topology,
    *,
    body: bytes | str,
    headers: Mapping[str, Any] | None,
    content_type: str | None,
    content_encoding: str | None,
    reason: str,
    error: str,
    exchange: str | None,
    routing_key: str | None,
    message_id: str | None = None,
) -> None:
    dl_headers = {
        **_carried_from_task(app, message_id),
        **{k: v for k, v in (headers or {}).items() if not k.startswith("x-saga-dlq-")},
    }
    dl_headers.update(
        {
            DLQ_REASON: reason[:MAX_REASON],
            DLQ_ERROR: error,
            DLQ_AT: datetime.now(UTC).isoformat(),
            DLQ_EXCHANGE: exchange or "",
            DLQ_ROUTING_KEY: routing_key or "",
            DLQ_WORKER: socket.gethostname(),
        }
    )
    options: dict[str, Any] = {}
    if message_id:
        options["message_id"] = message_id
        options["correlation_id"] = message_id
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=topology.kombu_dead_letter_exchange(),
            routing_key=topology.dead_letter_routing_key,
            headers=dl_headers,
            # A body without a content type is kept byte for byte.
            content_type=content_type or "application/octet-stream",
            content_encoding=content_encoding or "binary",
            delivery_mode=2,
            mandatory=True,
            declare=[topology.kombu_dead_letter_queue()],
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            **options,
        )
    log.error(
        "message dead-lettered to %s (%s): %s",
        topology.dead_letter_queue,
        error,
        reason[:MAX_REASON],
        extra={
            "reason": reason[:MAX_REASON],
            "error": error,
            "message_id": message_id,
            "dead_letter_queue": topology.dead_letter_queue,
        },
    )


def _carried_from_task(app: Celery, message_id: str | None) -> dict[str, Any]:
    """The replay headers of the delivery a running task dead-letters (its own message).

    Celery puts every header of the delivery on the task's request; the consumer,
    which dead-letters before any task runs, has no current task.
    """
    task = app.current_worker_task
    request = getattr(task, "request", None)
    if request is None or message_id is None or getattr(request, "id", None) != message_id:
        return {}
    carried = {name: getattr(request, name, None) for name in CARRIED_HEADERS}
    return {name: value for name, value in carried.items() if value is not None}


def task_body(args: Any, kwargs: Any) -> bytes:
    """The protocol v2 body of a task request, for dead-lettering from inside a task."""
    return json.dumps([list(args or ()), dict(kwargs or {}), _EMBED]).encode()
