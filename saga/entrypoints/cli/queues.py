"""`saga queues`: depth and consumers of the step queue and the dead-letter queue.

Asked of RabbitMQ with a passive queue.declare over AMQP (kombu, as the workers
and `saga dlq` connect): it reads the counts and never creates, changes or
consumes anything. A queue that does not exist is reported, not created.
"""

from __future__ import annotations

from dataclasses import asdict

from rich.table import Table

from saga.adapters.rabbitmq.publishers import is_amqp_url
from saga.adapters.rabbitmq.queues import BrokerUnavailable, QueueStats, queue_stats
from saga.entrypoints.cli._common import (
    REFUSED,
    USAGE,
    BrokerOpt,
    JsonOpt,
    fail,
    out,
    print_json,
    settings,
)


def queues(broker: BrokerOpt = None, as_json: JsonOpt = False) -> None:
    """Show how many messages wait in the step and dead-letter queues, and who consumes them.

    Asks RabbitMQ with a passive declare (nothing is created or consumed).
    Messages are the ready ones: a message a worker holds unacknowledged is not
    counted. Consumers of the step queue are workers, one per `saga worker` command
    (a Celery node), whatever its --concurrency: its processes share that one
    consumer, which prefetches SAGA_WORKER_PREFETCH messages per process. The
    dead-letter queue normally has none.

    Exit codes: 0 both queues exist; 1 a queue does not exist yet (it is still
    listed); 2 not RabbitMQ, or RabbitMQ unreachable.
    """
    s = settings(broker=broker)
    if not is_amqp_url(s.broker_url):
        fail(
            USAGE,
            f"`saga queues` asks RabbitMQ; SAGA_BROKER_URL is {s.redacted()['SAGA_BROKER_URL']}",
            "set SAGA_BROKER_URL (or --broker) to an amqp:// URL with user, password and host",
        )
    try:
        stats = queue_stats(s)
    except BrokerUnavailable as exc:
        fail(USAGE, str(exc))
    if as_json:
        print_json([asdict(q) for q in stats])
    else:
        _print(stats)
    missing = [q for q in stats if not q.exists]
    if missing:
        names = ", ".join(f"{q.queue} ({q.setting})" for q in missing)
        fail(
            REFUSED,
            f"no such queue on {s.redacted()['SAGA_BROKER_URL']}: {names}",
            "the relay and the workers declare both queues when they start (`saga relay`, "
            "`saga worker`); if they run, check that they use the same SAGA_STEP_QUEUE and "
            "SAGA_DEAD_LETTER_QUEUE as this shell (`saga config`)",
        )


def _print(stats: list[QueueStats]) -> None:
    rows = Table()
    rows.add_column("queue", no_wrap=True)  # a name is copied into the next command
    rows.add_column("role", no_wrap=True)
    rows.add_column("messages", justify="right", no_wrap=True)
    # Workers (`saga worker` commands), not processes: RabbitMQ's count.
    rows.add_column("consumers", justify="right", no_wrap=True)
    for q in stats:
        rows.add_row(q.queue, q.role, _count(q.messages), _count(q.consumers))
    out.print(rows)
    # Notes as lines under the table: a column for them would wrap in a terminal.
    for q in stats:
        if not q.exists:
            out.print(f"{q.queue} does not exist", highlight=False, soft_wrap=True)
        elif q.role == "steps" and q.messages and not q.consumers:
            out.print(
                f"{q.queue}: {q.messages} message(s) and no worker consumes it (`saga worker`)",
                highlight=False,
                soft_wrap=True,
            )
        elif q.role == "dead-letter" and q.messages:
            out.print(
                f"{q.queue}: {q.messages} dead-lettered message(s), see `saga dlq list`",
                highlight=False,
                soft_wrap=True,
            )


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


__all__ = ["BrokerUnavailable", "QueueStats", "queue_stats", "queues"]
