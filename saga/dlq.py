"""The dead-letter queue, for operators: browse, show, replay and drop messages.

Plain functions and one connection wrapper; the `saga dlq` commands are a thin
layer over them.

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

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import Any

import amqp
from kombu import Connection

from saga.broker.publishers import is_amqp_url
from saga.broker.topology import (
    DLQ_AT,
    DLQ_ERROR,
    DLQ_EXCHANGE,
    DLQ_REASON,
    DLQ_ROUTING_KEY,
    DLQ_WORKER,
    Topology,
)
from saga.config import Settings

log = logging.getLogger("saga.dlq")

# How many times `saga dlq replay` sent this message back. It survives a new
# dead-lettering by the worker's consumer (which keeps every header but its own
# x-saga-dlq-*); one dead-lettered from inside the task keeps only the task
# headers, so there the count starts again.
REPLAYS = "x-saga-replays"
# Set by the broker on delivery from a quorum queue, never by a publisher.
_BROKER_HEADERS = ("x-delivery-count",)
# Headers of a past dead-lettering; a replayed message starts clean.
_DEAD_LETTER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-saga-dlq-")
# RabbitMQ refuses a publish whose user_id is not the publishing user's.
_NOT_COPIED = ("user_id",)

MAX_BODY_SHOWN = 4096
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|auth|cookie|credential|private|envelope|signature|api.?key",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]*:)[^@\s/]*@")
_INLINE_SECRET = re.compile(
    r"((?:pass(?:word|wd)?|secret|token|api.?key)\s*[=:]\s*)([^\s,;&\"']+)", re.IGNORECASE
)


class DlqError(Exception):
    """The DLQ cannot be read or written; the message says what to do."""


class Action(StrEnum):
    KEEP = "keep"
    REPLAY = "replay"
    DROP = "drop"


# What each of RabbitMQ's own dead-letter reasons means for a step message.
_BROKER_REASONS = {
    "delivery_limit": "; the step crashed its worker on every delivery",
    "expired": "; its time-to-live ran out before a worker took it",
    "rejected": "; a worker rejected it without requeueing",
    "maxlen": "; the queue was full",
}


@dataclass(frozen=True)
class DeadLetter:
    """One message in the DLQ, as taken in a pass (position is 1-based, head first)."""

    position: int
    body: bytes
    properties: dict[str, Any]
    headers: dict[str, Any]

    @property
    def message_id(self) -> str | None:
        for value in (
            self.properties.get("message_id"),
            self.headers.get("id"),
            self.step_fields.get("message_id"),
        ):
            if isinstance(value, str) and value:
                return value
        return None

    @property
    def reason(self) -> str | None:
        reason = _text(self.headers.get(DLQ_REASON))
        if reason is not None:
            return reason
        death = self._death
        if death:
            why = _text(death.get("reason"))
            text = (
                f"RabbitMQ dead-lettered it from queue {_text(death.get('queue'))!r}: "
                f"{why} (after {death.get('count', '?')} time(s))"
            )
            return text + _BROKER_REASONS.get(why or "", "")
        return None

    @property
    def error(self) -> str | None:
        error = _text(self.headers.get(DLQ_ERROR))
        if error is None and _text(self._death.get("reason")) == "delivery_limit":
            return "DeliveryLimit"
        return error

    @property
    def at(self) -> str | None:
        at = self.headers.get(DLQ_AT) or self._death.get("time") or self.properties.get("timestamp")
        return _plain(at) if at is not None else None

    @property
    def worker(self) -> str | None:
        return _text(self.headers.get(DLQ_WORKER))

    @property
    def replays(self) -> int:
        value = self.headers.get(REPLAYS)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def saga_id(self) -> str | None:
        return _text(self.step_fields.get("saga_id"))

    @cached_property
    def step_fields(self) -> dict[str, Any]:
        """saga_id, saga, version, step, attempt, phase, message_id, when the body has them."""
        return _step_fields(self.body, self.properties.get("content_encoding"))

    @property
    def _death(self) -> dict[str, Any]:
        deaths = self.headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            return deaths[0]
        return {}

    def summary(self) -> dict[str, Any]:
        """What `saga dlq list` shows: identifiers and reasons, never the body."""
        step = self.step_fields
        return {
            "position": self.position,
            "message_id": self.message_id,
            "reason": self.reason,
            "error": self.error,
            "at": self.at,
            "worker": self.worker,
            "saga_id": self.saga_id,
            "saga": _text(step.get("saga")),
            "step": _text(step.get("step")),
            "attempt": step.get("attempt") if isinstance(step.get("attempt"), int) else None,
            "phase": _text(step.get("phase")),
            "replays": self.replays,
        }

    def details(self) -> dict[str, Any]:
        """What `saga dlq show` prints: headers, properties and body, secrets masked."""
        shown = {k: v for k, v in self.properties.items() if k != "application_headers"}
        return {
            **self.summary(),
            "original_exchange": _text(self.headers.get(DLQ_EXCHANGE)),
            "original_routing_key": _text(self.headers.get(DLQ_ROUTING_KEY)),
            "properties": redact(_plain(shown)),
            "headers": redact(_plain(self.headers)),
            "body": _body_for_display(self.body, self.properties.get("content_encoding")),
            "body_bytes": len(self.body),
        }


@dataclass(frozen=True)
class Selection:
    """Which messages a replay or drop acts on; `every` wins over the rest."""

    positions: frozenset[int] = frozenset()
    ids: frozenset[str] = frozenset()
    saga_id: str | None = None
    reason: str | None = None
    every: bool = False

    @property
    def empty(self) -> bool:
        return not (self.every or self.positions or self.ids or self.saga_id or self.reason)

    def matches(self, message: DeadLetter) -> bool:
        if self.every:
            return True
        named = bool(self.positions or self.ids)
        if named and not (message.position in self.positions or message.message_id in self.ids):
            return False
        if self.saga_id is not None and message.saga_id != self.saga_id:
            return False
        wanted = (self.reason or "").lower()
        return wanted in (message.reason or "").lower()


@dataclass
class PassResult:
    depth: int
    seen: list[DeadLetter] = field(default_factory=list)
    replayed: list[DeadLetter] = field(default_factory=list)
    dropped: list[DeadLetter] = field(default_factory=list)


Progress = Callable[[int, int], None]


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
                        message, exchange="", routing_key=self.name, headers=_kept(message)
                    )
                elif action is Action.REPLAY:
                    self._publish(
                        message,
                        exchange=self.topology.step_exchange,
                        routing_key=self.topology.step_routing_key,
                        headers=_replayed(message),
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


def browse(settings: Settings, progress: Progress | None = None) -> list[DeadLetter]:
    with DeadLetterQueue(settings) as dlq:
        return dlq.run_pass(lambda _: Action.KEEP, progress).seen


def find(
    settings: Settings,
    *,
    position: int | None = None,
    message_id: str | None = None,
    progress: Progress | None = None,
) -> DeadLetter | None:
    for message in browse(settings, progress):
        if position is not None and message.position == position:
            return message
        if message_id is not None and message.message_id == message_id:
            return message
    return None


def replay(
    settings: Settings, selection: Selection, progress: Progress | None = None
) -> PassResult:
    """Publish the selected messages to the step exchange (confirmed), then remove them.

    A message that is still poison comes back to the DLQ with a fresh reason.
    """
    with DeadLetterQueue(settings) as dlq:
        return dlq.run_pass(
            lambda m: Action.REPLAY if selection.matches(m) else Action.KEEP, progress
        )


def drop(settings: Settings, selection: Selection, progress: Progress | None = None) -> PassResult:
    with DeadLetterQueue(settings) as dlq:
        return dlq.run_pass(
            lambda m: Action.DROP if selection.matches(m) else Action.KEEP, progress
        )


def record(
    messages: Iterable[DeadLetter],
    action: Action,
    *,
    actor: str,
    why: str,
    queue: str,
    note: Callable[[str, str, dict[str, Any]], bool] | None,
) -> list[str]:
    """Log each replayed or dropped message; note it on its saga when it names one.

    `note(saga_id, kind, detail)` returns False for an unknown saga. Returns the
    saga ids whose history could not be written (the log line still stands).
    """
    unrecorded: list[str] = []
    kind = f"dead letter {'replayed' if action is Action.REPLAY else 'dropped'}"
    for message in messages:
        detail = {
            "message_id": message.message_id,
            "reason": message.reason,
            "step": message.summary()["step"],
            "attempt": message.summary()["attempt"],
            "why": why,
        }
        log.warning(
            kind,
            extra={
                "action": str(action),
                "actor": actor,
                "why": why,
                "dead_letter_queue": queue,
                "saga_id": message.saga_id,
                "message_id": message.message_id,
                "reason": message.reason,
                "replays": message.replays,
            },
        )
        if message.saga_id and note is not None:
            try:
                note(message.saga_id, kind, detail)
            except Exception:
                log.warning(
                    "could not record the action on the saga",
                    exc_info=True,
                    extra={"saga_id": message.saga_id, "message_id": message.message_id},
                )
                unrecorded.append(message.saga_id)
    return unrecorded


# -- helpers ------------------------------------------------------------------------------


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


def _kept(message: DeadLetter) -> dict[str, Any]:
    return {k: v for k, v in message.headers.items() if k not in _BROKER_HEADERS}


def _replayed(message: DeadLetter) -> dict[str, Any]:
    headers = {
        k: v
        for k, v in message.headers.items()
        if k not in _BROKER_HEADERS and not k.startswith(_DEAD_LETTER_HEADERS)
    }
    headers[REPLAYS] = message.replays + 1
    return headers


def _step_fields(body: bytes, encoding: object) -> dict[str, Any]:
    try:
        payload = json.loads(body.decode(encoding if isinstance(encoding, str) else "utf-8"))
    except (UnicodeDecodeError, LookupError, ValueError):
        return {}
    # A Celery protocol v2 body is [args, kwargs, embed]; the step message is args[0].
    if isinstance(payload, list) and payload and isinstance(payload[0], list) and payload[0]:
        payload = payload[0][0]
    if not isinstance(payload, dict):
        return {}
    keys = ("message_id", "saga_id", "saga", "version", "step", "attempt", "phase")
    return {k: payload[k] for k in keys if k in payload}


def _body_for_display(body: bytes, encoding: object) -> Any:
    try:
        text = body.decode(encoding if isinstance(encoding, str) else "utf-8")
    except (UnicodeDecodeError, LookupError):
        return f"<{len(body)} bytes, not text>"
    try:
        return redact(json.loads(text))
    except ValueError:
        pass
    shown = _mask_text(text[:MAX_BODY_SHOWN])
    if len(text) > MAX_BODY_SHOWN:
        shown += f"... ({len(text) - MAX_BODY_SHOWN} more characters)"
    return shown


def redact(value: Any) -> Any:
    """Mask values under secret-looking keys and credentials inside strings."""
    if isinstance(value, Mapping):
        return {
            k: "***" if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _mask_text(value)
    return value


def _mask_text(text: str) -> str:
    return _INLINE_SECRET.sub(r"\1***", _URL_CREDENTIALS.sub(r"\1***@", text))


def _plain(value: Any) -> Any:
    """AMQP field values (datetimes, bytes, decimals) as JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Decimal):
        return float(value)
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
