"""The errors the application services raise to their callers (HTTP API, client, CLI)."""

from __future__ import annotations

from typing import Any

from saga.core.errors import OrchestrationError


class InvalidInput(OrchestrationError):
    """The payload does not fit the saga's input schema."""

    def __init__(self, saga: str, errors: list[dict[str, Any]]) -> None:
        self.saga = saga
        self.errors = errors
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '(payload)'}: {e.get('msg')}"
            for e in errors
        )
        super().__init__(f"payload for saga {saga!r} is invalid: {fields}")


class IdempotencyConflict(OrchestrationError):
    """The idempotency key is already used by a saga with a different payload."""

    def __init__(self, key: str, saga_id: str) -> None:
        self.key = key
        self.saga_id = saga_id
        super().__init__(
            f"idempotency key {key!r} already started saga {saga_id} with a different "
            "payload; use a new key for a new request"
        )


class InvalidIdempotencyKey(OrchestrationError):
    pass


class SagaNotFound(OrchestrationError):
    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"no saga with id {saga_id!r}")


class OperatorActionRefused(OrchestrationError):
    pass
