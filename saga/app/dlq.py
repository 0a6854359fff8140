"""The dead-letter queue's policy, for operators: what a dead letter says, which
messages a replay or drop selects, the headers a kept or replayed copy carries,
and the record of each action. The passes over the queue itself (browse, show,
replay, drop over AMQP) are in saga.adapters.rabbitmq.dead_letters; the
`saga dlq` commands are a thin layer over both.
"""

from __future__ import annotations

import json
import logging
import re
from base64 import b64encode
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import Any

from saga.core.errors import SagaError
from saga.ports.broker_admin import (
    DLQ_AT,
    DLQ_ERROR,
    DLQ_EXCHANGE,
    DLQ_REASON,
    DLQ_ROUTING_KEY,
    DLQ_WORKER,
)

log = logging.getLogger("saga.dlq")

# How many times `saga dlq replay` sent this message back, and one entry per
# replay: the dead-lettering it ended (reason, error, at, worker) and who replayed
# it, when and why. A replay strips the x-saga-dlq-* headers of the dead-lettering
# it ends, so without these a message that fails again looks new. Both survive a
# new dead-lettering: the worker's consumer keeps every header but x-saga-dlq-*,
# a dead-lettering from inside a task carries them from the task's request
# (saga.entrypoints.celery.dead_letter), RabbitMQ's own keeps every header.
REPLAYS = "x-saga-replays"
HISTORY = "x-saga-replay-history"
CARRIED_HEADERS = (REPLAYS, HISTORY)
# Headers have a size limit (frame_max); the count above stays exact.
MAX_HISTORY = 10
_MAX_HISTORY_REASON = 500
# Past this many replays a message is refused unless --max-replays says more.
DEFAULT_MAX_REPLAYS = 3
# Set by the broker on delivery from a quorum queue, never by a publisher.
_BROKER_HEADERS = ("x-delivery-count",)
# Headers of a past dead-lettering; a replayed message starts clean.
_DEAD_LETTER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-saga-dlq-")
# RabbitMQ refuses a publish whose user_id is not the publishing user's.

MAX_BODY_SHOWN = 4096
# Bytes of a binary body in the one-line summary and in `saga dlq show`'s dump.
HEX_SUMMARY_BYTES = 32
HEX_DUMP_BYTES = 256
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|auth|cookie|credential|private|envelope|signature|api.?key",
    re.IGNORECASE,
)
# Control characters other than tab, newline and carriage return: not text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]*:)[^@\s/]*@")
_INLINE_SECRET = re.compile(
    r"((?:pass(?:word|wd)?|secret|token|api.?key)\s*[=:]\s*)([^\s,;&\"']+)", re.IGNORECASE
)


class DlqError(SagaError):
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
    def history(self) -> list[dict[str, Any]]:
        """The earlier dead-letterings, oldest first, each with the replay that ended it."""
        entries = self.headers.get(HISTORY)
        if not isinstance(entries, list):
            return []
        return [_plain(e) for e in entries if isinstance(e, Mapping)]

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
            "history": redact(self.history),
            "body": _body_for_display(self.body, self.properties.get("content_encoding")),
            "body_bytes": len(self.body),
            # Only a body that is not text: a text body is masked, its bytes are not.
            "body_base64": None if self.text_body is not None else b64encode(self.body).decode(),
        }

    @property
    def text_body(self) -> str | None:
        return _decode(self.body, self.properties.get("content_encoding"))


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
    # Selected for a replay but kept: replayed max_replays times already.
    refused: list[DeadLetter] = field(default_factory=list)


@dataclass(frozen=True)
class Replayer:
    """Who replays and why, written into each replayed message's history."""

    actor: str
    why: str


Progress = Callable[[int, int], None]


# -- operations ---------------------------------------------------------------------------


def replay_decider(
    selection: Selection, max_replays: int | None = DEFAULT_MAX_REPLAYS
) -> tuple[Callable[[DeadLetter], Action], list[DeadLetter]]:
    """What a replay pass does with each message, and the list it fills with the refused.

    A selected message is replayed unless it was replayed `max_replays` times
    already (None: no limit); then it is kept in place and listed as refused.
    """
    if max_replays is not None and max_replays < 1:
        raise ValueError(f"max_replays must be at least 1, not {max_replays}")
    refused: list[DeadLetter] = []

    def decide(message: DeadLetter) -> Action:
        if not selection.matches(message):
            return Action.KEEP
        if max_replays is not None and message.replays >= max_replays:
            refused.append(message)
            return Action.KEEP
        return Action.REPLAY

    return decide, refused


def drop_decider(selection: Selection) -> Callable[[DeadLetter], Action]:
    """What a drop pass does with each message: drop the selected, keep the rest."""
    return lambda m: Action.DROP if selection.matches(m) else Action.KEEP


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
            "replays": message.replays,
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


def kept_headers(message: DeadLetter) -> dict[str, Any]:
    return {k: v for k, v in message.headers.items() if k not in _BROKER_HEADERS}


def replayed_headers(message: DeadLetter, replayer: Replayer | None) -> dict[str, Any]:
    headers = {
        k: v
        for k, v in message.headers.items()
        if k not in _BROKER_HEADERS and not k.startswith(_DEAD_LETTER_HEADERS)
    }
    headers[REPLAYS] = message.replays + 1
    entry = {
        "reason": (message.reason or "")[:_MAX_HISTORY_REASON],
        "error": message.error or "",
        "at": message.at or "",
        "worker": message.worker or "",
        "replayed_at": datetime.now(UTC).isoformat(),
        "replayed_by": replayer.actor if replayer else "",
        "why": replayer.why[:_MAX_HISTORY_REASON] if replayer else "",
    }
    kept = [e for e in headers.get(HISTORY) or [] if isinstance(e, Mapping)]
    headers[HISTORY] = [*kept, entry][-MAX_HISTORY:]
    return headers


def _decode(body: bytes, encoding: object) -> str | None:
    """The body as text, or None if it is not text (printing it would garble a terminal).

    "binary" (what a worker writes when a message had no encoding) and unknown
    codec names are read as UTF-8.
    """
    try:
        text = body.decode(encoding if isinstance(encoding, str) else "utf-8")
    except LookupError:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(text) else text


def _step_fields(body: bytes, encoding: object) -> dict[str, Any]:
    text = _decode(body, encoding)
    if text is None:
        return {}
    try:
        payload = json.loads(text)
    except ValueError:
        return {}
    # A Celery protocol v2 body is [args, kwargs, embed]; the step message is args[0].
    if isinstance(payload, list) and payload and isinstance(payload[0], list) and payload[0]:
        payload = payload[0][0]
    if not isinstance(payload, dict):
        return {}
    keys = ("message_id", "saga_id", "saga", "version", "step", "attempt", "phase")
    return {k: payload[k] for k in keys if k in payload}


def _body_for_display(body: bytes, encoding: object) -> Any:
    text = _decode(body, encoding)
    if text is None:
        head = body[:HEX_SUMMARY_BYTES].hex(" ")
        more = " ..." if len(body) > HEX_SUMMARY_BYTES else ""
        return f"<{len(body)} bytes, not text: {head}{more}>"
    try:
        return redact(json.loads(text))
    except ValueError:
        pass
    shown = _mask_text(text[:MAX_BODY_SHOWN])
    if len(text) > MAX_BODY_SHOWN:
        shown += f"... ({len(text) - MAX_BODY_SHOWN} more characters)"
    return shown


def hex_dump(body: bytes, limit: int = HEX_DUMP_BYTES) -> list[str]:
    """Offset, 16 bytes in hex, the printable ones as ASCII; then how many were left out."""
    lines = []
    for offset in range(0, min(len(body), limit), 16):
        chunk = body[offset : offset + 16]
        left, right = chunk[:8].hex(" "), chunk[8:].hex(" ")
        shown = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {left:<23}  {right:<23}  |{shown}|")
    if len(body) > limit:
        lines.append(f"... {len(body) - limit} more byte(s); all of them in --json (body_base64)")
    return lines


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
