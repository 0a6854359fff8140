"""The dead-letter queue over AMQP: browse, show, replay and drop messages in passes.

One connection wrapper and the operations on it; what to do with each message
(selection, replay limit, headers, records) is saga.app.dlq's policy.

How messages are read without losing any
----------------------------------------
The DLQ is a quorum queue. Browsing it with basic.get and a requeue is not safe
on every RabbitMQ version: before 4.3 every requeue counts as a delivery
attempt, and from 4.0 quorum queues apply a default delivery limit of 20, so
the twentieth `saga dlq list` would silently discard a message (the DLQ has no
dead-letter target of its own).

So every operation is one *pass* over the messages present when it starts:
each message is taken with manual ack and either

- kept: an exact copy (body, properties, headers) is published to the back of
  the DLQ through the default exchange, confirmed, and then the original is
  acked;
- replayed: published to the step exchange, confirmed, then acked; or
- dropped: acked.

A full pass leaves the kept messages in their original order with a fresh
delivery count, which keeps positions (`saga dlq show 3`) stable between
commands. The cost is one confirmed publish per message per pass; dead-letter
queues are meant to be short. A crash between a confirm and its ack leaves
the original (returned when the connection drops) *and* the copy: a duplicate,
never a loss, and a replayed duplicate is dropped by the workers' inbox.
Two passes at the same time each miss the messages the other holds; message
ids (`--id`) are the reliable way to address a message then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import amqp
from kombu import Connection

from saga.adapters.rabbitmq.publishers import is_amqp_url
from saga.adapters.rabbitmq.topology import Topology
from saga.app.dlq import (
    DEFAULT_MAX_REPLAYS,
    Action,
    DeadLetter,
    DlqError,
    PassResult,
    Progress,
    Replayer,
    Selection,
    drop_decider,
    kept_headers,
    replay_decider,
    replayed_headers,
)
from saga.config import Settings

log = logging.getLogger("saga.dlq")

# RabbitMQ refuses a publish whose user_id is not the publishing user's.
_NOT_COPIED = ("user_id",)


class DeadLetterQueue:
    """A connection to the configured DLQ. Use as a context manager."""

    def __init__(self, settings: Settings, *, connect_timeout: float = 5.0) -> None:
        if not is_amqp_url(settings.broker_url):
            raise DlqError(
                "the dlq commands need RabbitMQ; SAGA_BROKER_URL is "
                f"{settings.redacted()['SAGA_BROKER_URL']} (set it to amqp://...)"
            )
        self.settings = settings
        self.topology = Topology.from_settings(settings)
        self._connect_timeout = connect_timeout
        self._connection: Connection | None = None
        self._channel: Any = None

    def __enter__(self) -> DeadLetterQueue:
        # confirm_publish: every basic_publish waits for the broker's confirm, and
        # an unroutable mandatory message raises instead of vanishing.
        connection = Connection(
            self.settings.broker_url,
            transport_options={"confirm_publish": True},
            connect_timeout=self._connect_timeout,
        )
        try:
            connection.ensure_connection(max_retries=1)
            self.topology.declare_kombu(connection)
            self._channel = connection.channel()
        except Exception as exc:
            connection.release()
            raise DlqError(
                f"cannot reach RabbitMQ at {self.settings.redacted()['SAGA_BROKER_URL']} "
                f"({exc}); check that it runs and SAGA_BROKER_URL points at it"
            ) from None
        self._connection = connection
        return self

    def __exit__(self, *exc_info: object) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # a broken connection is gone anyway; unacked messages return
                log.debug("closing the broker connection failed", exc_info=True)

    @property
    def name(self) -> str:
        return self.topology.dead_letter_queue

    def depth(self) -> int:
        result = self._channel.queue_declare(self.name, passive=True)
        return int(result.message_count)

    def run_pass(
        self,
        decide: Callable[[DeadLetter], Action],
        progress: Progress | None = None,
        *,
        replayer: Replayer | None = None,
    ) -> PassResult:
        """Take every message present now once; keep, replay or drop each as `decide` says."""
        result = PassResult(depth=self.depth())
        if progress:
            progress(0, result.depth)
        for position in range(1, result.depth + 1):
            raw = self._channel.basic_get(self.name, no_ack=False)
            if raw is None:  # someone else took messages meanwhile
                break
            message = _dead_letter(position, raw)
            action = decide(message)
            try:
                if action is Action.KEEP:
                    self._publish(
                        message, exchange="", routing_key=self.name, headers=kept_headers(message)
                    )
                elif action is Action.REPLAY:
                    self._publish(
                        message,
                        exchange=self.topology.step_exchange,
                        routing_key=self.topology.step_routing_key,
                        headers=replayed_headers(message, replayer),
                    )
            except Exception as exc:
                # The message is still unacked: closing the connection returns it.
                raise DlqError(
                    f"publishing message {position} ({message.message_id}) failed: {exc}; "
                    f"nothing was lost ({len(result.seen)} message(s) handled before); run "
                    "the command again"
                ) from None
            self._channel.basic_ack(raw.delivery_tag)
            result.seen.append(message)
            if action is Action.REPLAY:
                result.replayed.append(message)
            elif action is Action.DROP:
                result.dropped.append(message)
            if progress:
                progress(position, result.depth)
        return result

    def _publish(
        self, message: DeadLetter, *, exchange: str, routing_key: str, headers: dict[str, Any]
    ) -> None:
        properties = {
            k: v
            for k, v in message.properties.items()
            if k not in _NOT_COPIED and k != "application_headers"
        }
        properties["delivery_mode"] = 2
        copy = amqp.Message(message.body, application_headers=headers, **properties)
        self._channel.basic_publish(
            copy, exchange=exchange, routing_key=routing_key, mandatory=True
        )


# -- operations ---------------------------------------------------------------------------


class RabbitDeadLetters:
    """The operator's dead-letter operations, one pass and one connection each.

    Built by the composition root (`Container.dead_letters`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def browse(self, progress: Progress | None = None) -> list[DeadLetter]:
        with DeadLetterQueue(self.settings) as dlq:
            return dlq.run_pass(lambda _: Action.KEEP, progress).seen

    def find(
        self,
        *,
        position: int | None = None,
        message_id: str | None = None,
        progress: Progress | None = None,
    ) -> DeadLetter | None:
        for message in self.browse(progress):
            if position is not None and message.position == position:
                return message
            if message_id is not None and message.message_id == message_id:
                return message
        return None

    def replay(
        self,
        selection: Selection,
        progress: Progress | None = None,
        *,
        replayer: Replayer | None = None,
        max_replays: int | None = DEFAULT_MAX_REPLAYS,
    ) -> PassResult:
        """Publish the selected messages to the step exchange (confirmed), then remove them.

        A message that is still poison comes back to the DLQ with a fresh reason, its
        count and history kept. One replayed `max_replays` times already is kept in
        place and listed in `refused` (None: no limit).
        """
        decide, refused = replay_decider(selection, max_replays)
        with DeadLetterQueue(self.settings) as dlq:
            result = dlq.run_pass(decide, progress, replayer=replayer)
        result.refused = refused
        return result

    def drop(self, selection: Selection, progress: Progress | None = None) -> PassResult:
        with DeadLetterQueue(self.settings) as dlq:
            return dlq.run_pass(drop_decider(selection), progress)


def _dead_letter(position: int, raw: amqp.Message) -> DeadLetter:
    properties = dict(raw.properties)
    headers = properties.get("application_headers")
    body = raw.body if isinstance(raw.body, bytes) else str(raw.body).encode()
    return DeadLetter(
        position=position,
        body=body,
        properties=properties,
        headers=dict(headers) if isinstance(headers, Mapping) else {},
    )
