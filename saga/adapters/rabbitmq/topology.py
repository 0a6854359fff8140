"""Exchanges and queues of the step messages and of the dead-letter queue.

    relay ──▶ [step exchange, direct] ──(routing key = step queue)──▶ step queue (quorum)
                       │                                                │ rejected / delivery limit
                       └──(routing key = chain queue)──▶ chain queue ───┤ (quorum, when set)
    worker (poison, with reason) ──▶ [dead-letter exchange, direct] ◀───┘
                                              └──(routing key = DLQ)──▶ dead-letter queue (quorum)

The chain queue exists only with SAGA_CHAIN_QUEUE: the relay then routes chain step
messages there, for `saga chain-executor`, and everything else to the step queue.

Both the relay (aio-pika) and the workers (kombu, through Celery) declare the same
names with the same arguments, so whichever starts first creates them and the
other's declaration is a no-op. RabbitMQ refuses a redeclaration with different
arguments (PRECONDITION_FAILED), which is why they live in one place.

Exchanges and queues have separate namespaces in RabbitMQ, so each exchange takes
the name of the queue it feeds.

SAGA_QUEUE_TYPE picks quorum (the default) or classic queues. Quorum queues are
replicated on every node of a cluster (a node's loss loses no message and
another node takes over the queue), count redeliveries against a delivery limit
(a message that kills its worker every time ends in the DLQ) and dead-letter at
least once; they work on a single node too. Classic is for a broker that already
holds classic queues of these names: RabbitMQ cannot change a queue's type in
place, and `TopologyMismatch` says how to move (see its message).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kombu import Connection, Exchange, Queue

from saga.core.errors import SagaError
from saga.ports.broker_admin import DLQ_AT as DLQ_AT
from saga.ports.broker_admin import DLQ_ERROR as DLQ_ERROR
from saga.ports.broker_admin import DLQ_EXCHANGE as DLQ_EXCHANGE
from saga.ports.broker_admin import DLQ_HEADERS as DLQ_HEADERS
from saga.ports.broker_admin import DLQ_REASON as DLQ_REASON
from saga.ports.broker_admin import DLQ_ROUTING_KEY as DLQ_ROUTING_KEY
from saga.ports.broker_admin import DLQ_WORKER as DLQ_WORKER

if TYPE_CHECKING:
    import aio_pika.abc

    from saga.config import Settings

# A quorum queue dead-letters a message once it has been returned this many times
# (a consumer rejecting it with requeue, or dying while holding it). RabbitMQ 4
# defaults to 20; RabbitMQ 3.x has no limit unless one is set. We set it so both
# behave alike and a message that kills its worker every time ends up in the DLQ
# instead of crash-looping the pool. Database outages never count against it:
# the worker retries those by publishing a fresh copy and acking the original
# (see saga.entrypoints.celery.tasks), which starts the copy's count at zero.
DELIVERY_LIMIT = 20

QUEUE_TYPES = ("quorum", "classic")


class TopologyMismatch(SagaError, RuntimeError):
    """A queue exists on the broker with other arguments than the settings give it."""


def mismatch(queue: str, queue_type: str, detail: str) -> TopologyMismatch:
    other = "classic" if queue_type == "quorum" else "quorum"
    return TopologyMismatch(
        f"queue {queue!r} exists on the broker with other arguments than "
        f"SAGA_QUEUE_TYPE={queue_type} gives it ({detail}). RabbitMQ cannot change a queue's "
        f"type or arguments in place. Either set SAGA_QUEUE_TYPE={other} if the queue is "
        f"{other}, or stop the relay and workers, let `saga queues` show it empty (replay "
        f"dead letters first with `saga dlq`), delete it (rabbitmqctl delete_queue {queue}) "
        f"and start them again: they declare it as {queue_type}"
    )


def _is_mismatch(exc: BaseException) -> bool:
    # kombu (py-amqp) raises PreconditionFailed, aio-pika ChannelPreconditionFailed;
    # both carry RabbitMQ's "PRECONDITION_FAILED - inequivalent arg ..." text.
    return "PRECONDITION_FAILED" in str(exc) or "inequivalent arg" in str(exc)


# The headers the worker adds to a message it dead-letters (DLQ_*, imported above)
# are part of the message format: saga.ports.broker_admin has them.


@dataclass(frozen=True)
class Topology:
    step_exchange: str
    step_queue: str
    dead_letter_exchange: str
    dead_letter_queue: str
    delivery_limit: int = DELIVERY_LIMIT
    queue_type: str = "quorum"
    # "" = no chain queue: chain step messages go to the step queue.
    chain_queue: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            step_exchange=settings.step_queue,
            step_queue=settings.step_queue,
            dead_letter_exchange=settings.dead_letter_queue,
            dead_letter_queue=settings.dead_letter_queue,
            queue_type=settings.queue_type,
            chain_queue=settings.chain_queue,
        )

    @property
    def step_routing_key(self) -> str:
        return self.step_queue

    @property
    def dead_letter_routing_key(self) -> str:
        return self.dead_letter_queue

    def step_queue_arguments(self) -> dict[str, Any]:
        if self.queue_type == "classic":
            # Delivery limits and at-least-once dead-lettering are quorum-only:
            # a classic queue dead-letters only what a worker rejects.
            return {
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-routing-key": self.dead_letter_routing_key,
            }
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.dead_letter_routing_key,
            "x-delivery-limit": self.delivery_limit,
            # At-most-once (the default) drops a dead-lettered message if the DLQ
            # does not confirm it; at-least-once keeps it until it does, and
            # RabbitMQ requires reject-publish overflow for that.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    # -- kombu (workers, non-AMQP transports) -------------------------------------

    def kombu_step_exchange(self) -> Exchange:
        return Exchange(self.step_exchange, type="direct", durable=True, auto_delete=False)

    def kombu_dead_letter_exchange(self) -> Exchange:
        return Exchange(self.dead_letter_exchange, type="direct", durable=True, auto_delete=False)

    def kombu_step_queue(self) -> Queue:
        return Queue(
            self.step_queue,
            exchange=self.kombu_step_exchange(),
            routing_key=self.step_routing_key,
            durable=True,
            auto_delete=False,
            queue_arguments=self.step_queue_arguments(),
        )

    def kombu_chain_queue(self) -> Queue | None:
        """The chain executor's queue: bound to the step exchange under its own name,
        with the step queue's arguments (dead-lettering, delivery limit)."""
        if not self.chain_queue:
            return None
        return Queue(
            self.chain_queue,
            exchange=self.kombu_step_exchange(),
            routing_key=self.chain_queue,
            durable=True,
            auto_delete=False,
            queue_arguments=self.step_queue_arguments(),
        )

    def kombu_dead_letter_queue(self) -> Queue:
        return Queue(
            self.dead_letter_queue,
            exchange=self.kombu_dead_letter_exchange(),
            routing_key=self.dead_letter_routing_key,
            durable=True,
            auto_delete=False,
            queue_arguments=self.dead_letter_queue_arguments(),
        )

    def declare_kombu(self, connection: Connection) -> None:
        # A channel of its own: a failed declaration closes its channel, and the
        # connection's default channel may be in use by a consumer.
        channel = connection.channel()
        try:
            # The DLQ first: the step queue names it as its dead-letter target.
            declare_kombu_queue(channel, self.kombu_dead_letter_queue(), self.queue_type)
            declare_kombu_queue(channel, self.kombu_step_queue(), self.queue_type)
            chain = self.kombu_chain_queue()
            if chain is not None:
                declare_kombu_queue(channel, chain, self.queue_type)
        finally:
            channel.close()

    # -- aio-pika (relay) ---------------------------------------------------------

    async def declare_aio_pika(
        self, channel: aio_pika.abc.AbstractChannel
    ) -> aio_pika.abc.AbstractExchange:
        """Declare everything; return the step exchange to publish to."""
        import aio_pika

        dlx = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dlq = await self.declare_aio_pika_queue(
            channel, self.dead_letter_queue, self.dead_letter_queue_arguments()
        )
        await dlq.bind(dlx, routing_key=self.dead_letter_routing_key)
        exchange = await channel.declare_exchange(
            self.step_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        queue = await self.declare_aio_pika_queue(
            channel, self.step_queue, self.step_queue_arguments()
        )
        await queue.bind(exchange, routing_key=self.step_routing_key)
        if self.chain_queue:
            chain = await self.declare_aio_pika_queue(
                channel, self.chain_queue, self.step_queue_arguments()
            )
            await chain.bind(exchange, routing_key=self.chain_queue)
        return exchange

    async def declare_aio_pika_queue(
        self, channel: aio_pika.abc.AbstractChannel, name: str, arguments: dict[str, Any]
    ) -> aio_pika.abc.AbstractQueue:
        try:
            return await channel.declare_queue(name, durable=True, arguments=arguments)
        except Exception as exc:
            if _is_mismatch(exc):
                raise mismatch(name, self.queue_type, str(exc)) from None
            raise


def declare_kombu_queue(channel: Any, queue: Queue, queue_type: str) -> None:
    """Declare one queue; a queue of another type or arguments is a TopologyMismatch."""
    try:
        queue.bind(channel).declare()
    except Exception as exc:
        if _is_mismatch(exc):
            raise mismatch(str(queue.name), queue_type, str(exc)) from None
        raise


def declare_topology(settings: Settings) -> Topology:
    """Declare exchanges and queues on the configured broker (idempotent)."""
    topology = Topology.from_settings(settings)
    with Connection(settings.broker_url) as connection:
        topology.declare_kombu(connection)
    return topology
