"""The broker port: what the relay hands the broker, and the publisher that takes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from saga.core.errors import SagaError


@dataclass(frozen=True)
class PendingMessage:
    """An outbox row the relay has claimed."""

    id: int
    message_id: str
    saga_id: str
    body: dict[str, Any]


class PublishFailed(SagaError):
    """Some message of the batch was not confirmed (broker down, nack, unroutable)."""


class Publisher(Protocol):
    """Publishes message bodies durably; returns only once the broker confirmed all,
    raises PublishFailed otherwise."""

    def publish_batch(self, messages: Sequence[PendingMessage]) -> None: ...

    def close(self) -> None: ...
