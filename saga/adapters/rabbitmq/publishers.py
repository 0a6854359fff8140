"""Publishers of claimed outbox rows (the `Publisher` port).

`AmqpPublisher` talks to RabbitMQ through aio-pika with publisher confirms,
pipelined: the whole batch is written, then all confirms are awaited together.
Waiting for each confirm in turn costs a network round trip plus a quorum
commit per message (under 1,000 messages/s measured); pipelining pays it about
once per batch. One event loop and one connection serve every batch.

`KombuPublisher` serves non-AMQP transports (the embedded default, kombu's
SQLAlchemy transport on SQLite), where publishing is an INSERT and returning
means it committed.

Both return only once every message of the batch is safe with the broker, and
raise `PublishFailed` otherwise; the relay then leaves the rows unmarked and
publishes them again (duplicates are dropped by the inbox).

The broker URL may list several nodes of one cluster, `;`-separated (kombu's
failover syntax, which Celery and the DLQ passes take as is). `AmqpPublisher`
stays on the node that last worked and, when its connection dies, moves to the
next one and publishes the unconfirmed batch again there at once: a message is
never dropped for lack of a confirm, at worst published twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kombu import Connection, Producer

from saga.adapters.rabbitmq.celery_message import default_origin, step_task_message
from saga.adapters.rabbitmq.topology import Topology, TopologyMismatch
from saga.ports.broker import PendingMessage, Publisher, PublishFailed

if TYPE_CHECKING:
    import aio_pika.abc

from saga.adapters.rabbitmq import embedded
from saga.config import Settings

log = logging.getLogger("saga.broker")

_AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


# "Is this body a chain step's message?" (saga.app.routing.ChainRouting.is_chain).
ChainRoute = Callable[[Mapping[str, Any]], bool]


def is_amqp_url(url: str) -> bool:
    return url.startswith(_AMQP_SCHEMES)


def routing_key(topology: Topology, chain_route: ChainRoute | None, body: Mapping[str, Any]) -> str:
    """The chain queue for a chain step's message when there is one, else the step queue."""
    if topology.chain_queue and chain_route is not None and chain_route(body):
        return topology.chain_queue
    return topology.step_routing_key


def _aio_pika_url(url: str) -> str:
    if url.startswith("pyamqp://"):
        return "amqp://" + url[len("pyamqp://") :]
    return url


def broker_urls(url: str) -> list[str]:
    """The nodes of a `;`-separated broker URL list, in order (one URL: itself)."""
    return [part.strip() for part in url.split(";") if part.strip()]


class AmqpPublisher:
    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        origin: str | None = None,
        connect_timeout: float = 10.0,
        confirm_timeout: float = 30.0,
        chain_route: ChainRoute | None = None,
    ) -> None:
        self._urls = [_aio_pika_url(u) for u in broker_urls(url)]
        if not self._urls:
            raise PublishFailed("the broker URL is empty: set SAGA_BROKER_URL to amqp://...")
        # The node in use (an index into _urls): kept while it works, so every
        # relay does not pile onto the first node after a failover.
        self._current = 0
        # The node of the last connection that worked (None: none yet), to log a move.
        self._connected: int | None = None
        self._topology = topology
        self._chain_route = chain_route
        self._origin = origin or default_origin()
        self._connect_timeout = connect_timeout
        self._confirm_timeout = confirm_timeout
        self._loop = asyncio.new_event_loop()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    def connect(self) -> None:
        """Connect and declare the topology now rather than at the first batch."""
        try:
            self._loop.run_until_complete(self._ensure())
        except Exception as exc:
            self._loop.run_until_complete(self._drop())
            raise PublishFailed(f"cannot reach RabbitMQ: {exc!r}") from exc

    def publish_batch(self, messages: Sequence[PendingMessage]) -> None:
        if not messages:
            return
        # One try per node: a batch whose connection died is published again at
        # once on the next node rather than after the relay's backoff. Every
        # unconfirmed message goes again; the inbox drops the copies.
        failure = PublishFailed(f"publishing {len(messages)} message(s) failed")
        for attempt in range(len(self._urls)):
            if attempt:
                log.warning(
                    "publish failed on a broker node; trying the next",
                    extra={"node": _where(self._urls[self._current]), "error": str(failure)},
                )
                self._current = (self._current + 1) % len(self._urls)
            try:
                self._loop.run_until_complete(self._publish(messages))
                return
            except _NoNode:
                # Every node was tried already.
                raise
            except Exception as exc:
                # A fresh connection next time: after a lost confirm or a closed
                # channel the old one's state cannot be trusted.
                self._loop.run_until_complete(self._drop())
                failure = (
                    exc
                    if isinstance(exc, PublishFailed)
                    else PublishFailed(f"publishing {len(messages)} message(s) failed: {exc!r}")
                )
                if failure is not exc:
                    failure.__cause__ = exc
        # Only a success returns: whatever ends the loop raises, so no batch is
        # taken for published without its confirms.
        raise failure

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self._drop())
        self._loop.close()

    async def _ensure(self) -> aio_pika.abc.AbstractExchange:
        import aio_pika

        if (
            self._exchange is not None
            and self._channel is not None
            and not self._channel.is_closed
            and self._connection is not None
            and not self._connection.is_closed
        ):
            return self._exchange
        await self._drop()
        # Every node once, from the one in use: a dead node refuses at once, a
        # hung one costs connect_timeout.
        errors: list[str] = []
        for offset in range(len(self._urls)):
            index = (self._current + offset) % len(self._urls)
            try:
                # Plain (not robust) connection: a failure must surface to the relay,
                # which owns the retry policy, instead of being papered over here.
                self._connection = await aio_pika.connect(
                    self._urls[index], timeout=self._connect_timeout
                )
                # on_return_raises: an unroutable mandatory message fails its publish
                # instead of being acknowledged and silently dropped by the broker.
                self._channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                # A node cut off from its cluster may accept a connection and then
                # never answer the declarations.
                async with asyncio.timeout(self._connect_timeout):
                    self._exchange = await self._topology.declare_aio_pika(self._channel)
            except TopologyMismatch as exc:
                await self._drop()
                raise _NoNode(str(exc)) from exc
            except Exception as exc:
                errors.append(f"{_where(self._urls[index])}: {exc!r}")
                await self._drop()
                continue
            if self._connected is not None and index != self._connected:
                log.warning(
                    "relay moved to another broker node", extra={"node": _where(self._urls[index])}
                )
            self._current = self._connected = index
            return self._exchange
        raise _NoNode("no broker node answered: " + "; ".join(errors))

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = None
        self._exchange = None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), timeout=5)
            except Exception:  # closing a broken connection may fail; it is gone anyway
                log.debug("closing broker connection failed", exc_info=True)

    async def _publish(self, messages: Sequence[PendingMessage]) -> None:
        import aiormq

        exchange = await self._ensure()
        assert self._channel is not None
        # The channel under aio-pika's wrapper, and properties built directly:
        # aio-pika's Message object cost a fifth of the relay's time per message.
        channel = await self._channel.get_underlay_channel()
        keys = [routing_key(self._topology, self._chain_route, m.body) for m in messages]
        tasks = [step_task_message(m, origin=self._origin) for m in messages]
        # gather starts the publishes in list order and aiormq serialises them
        # on the channel under a FIFO lock, so the broker sees them in order;
        # only the confirm waits overlap. on_return_raises (set on the channel)
        # turns an unroutable mandatory message into a failed publish.
        async with asyncio.timeout(self._confirm_timeout):
            results = await asyncio.gather(
                *(
                    channel.basic_publish(
                        task.body,
                        exchange=exchange.name,
                        routing_key=key,
                        properties=aiormq.spec.Basic.Properties(
                            content_type=task.content_type,
                            content_encoding=task.content_encoding,
                            delivery_mode=PERSISTENT,
                            headers=task.headers,
                            correlation_id=task.correlation_id,
                            message_id=task.task_id,
                        ),
                        mandatory=True,
                    )
                    for task, key in zip(tasks, keys, strict=True)
                ),
                return_exceptions=True,
            )
        failures = [r for r in results if isinstance(r, BaseException) or _refused(r)]
        if failures:
            raise PublishFailed(
                f"{len(failures)} of {len(messages)} message(s) not confirmed; first: "
                f"{failures[0]!r}"
            )


# AMQP delivery mode 2: the broker writes the message to disk.
PERSISTENT = 2


class _NoNode(PublishFailed):
    """No node of the list could be used: trying them all again at once is pointless."""


def _where(url: str) -> str:
    """host:port of a broker URL, for logs (no credentials)."""
    return url.split("@", 1)[-1].split("/", 1)[0]


def _refused(result: object) -> bool:
    """A publish answer that is not the broker's Basic.Ack (a nack or a returned message)."""
    import aiormq

    return not isinstance(result, aiormq.spec.Basic.Ack)


class KombuPublisher:
    """For kombu transports without publisher confirms (SQLAlchemy, Redis, ...).

    On AMQP it works too (py-amqp waits for each confirm in turn), but slowly;
    `create_publisher` picks `AmqpPublisher` there.
    """

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        origin: str | None = None,
        chain_route: ChainRoute | None = None,
    ) -> None:
        self._url = url
        self._topology = topology
        self._chain_route = chain_route
        self._origin = origin or default_origin()
        self._connection: Connection | None = None
        self._producer: Producer | None = None

    def connect(self) -> None:
        self._ensure()

    def _ensure(self) -> Producer:
        if self._producer is not None:
            return self._producer
        # confirm_publish makes py-amqp wait for each confirm; other transports
        # reject unknown options (SQLAlchemy passes them to create_engine).
        options = {"confirm_publish": True} if is_amqp_url(self._url) else {}
        connection = Connection(self._url, transport_options=options)
        try:
            connection.ensure_connection(max_retries=1)
            self._topology.declare_kombu(connection)
            self._producer = Producer(
                connection.default_channel, exchange=self._topology.kombu_step_exchange()
            )
        except Exception as exc:
            connection.release()
            raise PublishFailed(f"cannot reach the broker: {exc!r}") from exc
        self._connection = connection
        return self._producer

    def publish_batch(self, messages: Sequence[PendingMessage]) -> None:
        if not messages:
            return
        producer = self._ensure()
        try:
            for m in messages:
                task = step_task_message(m, origin=self._origin)
                producer.publish(
                    task.body,
                    routing_key=routing_key(self._topology, self._chain_route, m.body),
                    headers=task.headers,
                    content_type=task.content_type,
                    content_encoding=task.content_encoding,
                    delivery_mode=2,
                    correlation_id=task.correlation_id,
                    message_id=task.task_id,
                    mandatory=True,
                    retry=False,
                )
        except Exception as exc:
            self.close()
            raise PublishFailed(f"publishing {len(messages)} message(s) failed: {exc!r}") from exc

    def close(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:
                log.debug("closing broker connection failed", exc_info=True)


def create_publisher(
    settings: Settings, *, origin: str | None = None, chain_route: ChainRoute | None = None
) -> Publisher:
    """The publisher for the configured broker URL; connects lazily. `chain_route`
    picks the messages that go to SAGA_CHAIN_QUEUE (when set)."""
    embedded.register()
    topology = Topology.from_settings(settings)
    if is_amqp_url(settings.broker_url):
        return AmqpPublisher(settings.broker_url, topology, origin=origin, chain_route=chain_route)
    return KombuPublisher(settings.broker_url, topology, origin=origin, chain_route=chain_route)
