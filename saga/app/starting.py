"""Starting a saga: input validation and idempotency keys."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from saga.app.errors import IdempotencyConflict, InvalidIdempotencyKey, InvalidInput
from saga.app.transitions import SagaWriter, now
from saga.core.definitions import Registry, SagaDefinition
from saga.core.machine import transition
from saga.core.messages import Started
from saga.core.state import SagaState
from saga.ports.store import (
    DuplicateIdempotencyKey,
    HistoryEntry,
    OutboxMessage,
    SagaRecord,
    SagaStarts,
    UnitOfWorkFactory,
)
from saga.ports.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger("saga.orchestrator")

MAX_IDEMPOTENCY_KEY = 200


@dataclass(frozen=True)
class Enqueued:
    saga_id: str
    created: bool


class StartInUnitOfWork:
    """SagaStarts through any store's unit of work."""

    def __init__(self, uow_factory: UnitOfWorkFactory) -> None:
        self._uow = uow_factory

    def __call__(
        self,
        record: SagaRecord,
        messages: Sequence[OutboxMessage],
        notes: Sequence[HistoryEntry],
    ) -> None:
        with self._uow() as uow:
            uow.sagas.start(record, messages, notes)
            uow.commit()


def payload_hash(saga: str, payload: Mapping[str, Any]) -> str:
    canonical = json.dumps({"saga": saga, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Starter:
    """Validates a request and starts its saga, once per idempotency key."""

    def __init__(
        self,
        registry: Registry,
        uow_factory: UnitOfWorkFactory,
        writer: SagaWriter,
        *,
        starts: SagaStarts | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ):
        """`starts`: how a saga is written (default: `sagas.start` in a unit of work)."""
        self.registry = registry
        self._uow = uow_factory
        self._starts = starts or StartInUnitOfWork(uow_factory)
        self._writer = writer
        self._telemetry = telemetry

    def validate(self, saga: str, payload: object) -> tuple[SagaDefinition, BaseModel]:
        definition = self.registry.get(saga)
        try:
            document = json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                saga, [{"loc": (), "msg": f"not a JSON document ({exc})", "type": "json_invalid"}]
            ) from None
        try:
            # Strict JSON mode: a caller's value must be the JSON type the schema
            # names (`true` is not one cent, "12" is not twelve), while the types
            # JSON spells as strings (dates, UUIDs) still parse from strings.
            model = definition.input_model.model_validate_json(
                document, strict=not definition.lax_input
            )
        except ValidationError as exc:
            raise InvalidInput(saga, [dict(e) for e in exc.errors(include_url=False)]) from None
        return definition, model

    def enqueue(
        self, saga: str, payload: object, *, idempotency_key: str | None = None
    ) -> Enqueued:
        """Start a saga; with a key, a repeated request returns the first saga's id."""
        if idempotency_key is not None and not (
            0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
        ):
            raise InvalidIdempotencyKey(
                f"idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"
            )
        definition, model = self.validate(saga, payload)
        data = model.model_dump(mode="json")
        digest = payload_hash(definition.name, data)
        # A repeated key is found by the insert itself (nothing is written then),
        # not by a lookup before it: one round trip for a new saga.
        saga_id = self._writer.new_id()
        state = SagaState.new(
            saga_id, definition.name, definition.version, [s.name for s in definition.steps]
        )
        t = transition(definition, state, Started())
        record = SagaRecord(
            state=t.state,
            input=data,
            idempotency_key=idempotency_key,
            payload_hash=digest,
            created_at=now(),
            updated_at=now(),
        )
        try:
            self._starts(
                record,
                [self._writer.outbox_message(record.state, c) for c in t.commands],
                [
                    HistoryEntry(
                        now(), saga_id, "started", {"saga": saga, "version": definition.version}
                    )
                ],
            )
        except DuplicateIdempotencyKey:
            # Another API instance won the race for this key; answer as it would.
            assert idempotency_key is not None
            existing = self._find_by_key(idempotency_key, digest)
            if existing is None:
                raise
            return Enqueued(existing, created=False)
        log.info("saga started", extra={"saga_id": saga_id, "saga": saga})
        self._telemetry.saga_enqueued(definition.name)
        return Enqueued(saga_id, created=True)

    def _find_by_key(self, key: str, digest: str) -> str | None:
        with self._uow() as uow:
            found = uow.sagas.by_idempotency_key(key)
        if found is None:
            return None
        if found.payload_hash != digest:
            raise IdempotencyConflict(key, found.saga_id)
        return found.saga_id
