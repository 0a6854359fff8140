"""The HTTP API's request and response bodies.

Plain pydantic models with no FastAPI import, so the Python client can parse
responses into the same types without loading the web framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saga.ports.store import HistoryEntry, SagaRecord


class EnqueueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    saga: str = Field(
        min_length=1,
        max_length=63,
        description="Name of a registered saga definition (its latest version is started).",
        examples=["order-payment"],
    )
    payload: dict[str, Any] = Field(
        description="The saga's input; validated against the saga's input schema.",
        examples=[
            {
                "order_id": "o-1001",
                "customer_id": "c-42",
                "amount_cents": 1999,
                "currency": "EUR",
            }
        ],
    )


class Enqueued(BaseModel):
    saga_id: str
    saga: str
    # False when the Idempotency-Key had already started this saga.
    created: bool
    status_url: str


class StepView(BaseModel):
    name: str
    status: str
    attempts: int
    failures: int
    compensation_attempts: int
    compensation_failures: int
    last_error: str | None = None
    # Set while the step waits for an unreachable ledger: when that began.
    waiting_for_ledger_since: datetime | None = None


class HistoryView(BaseModel):
    at: datetime
    kind: str
    detail: dict[str, Any]
    actor: str | None = None


class SagaView(BaseModel):
    saga_id: str
    saga: str
    version: int
    status: str
    reason: str | None = None
    # Name of the step the saga is at (None once it has moved past the last one).
    current_step: str | None = None
    steps: list[StepView]
    input: dict[str, Any]
    data: dict[str, Any]
    idempotency_key: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    history: list[HistoryView] = Field(default_factory=list)

    @classmethod
    def from_record(cls, record: SagaRecord, history: list[HistoryEntry]) -> SagaView:
        state = record.state
        current = state.steps[state.current].name if 0 <= state.current < len(state.steps) else None
        return cls(
            saga_id=state.saga_id,
            saga=state.name,
            version=state.version,
            status=str(state.status),
            reason=state.reason,
            current_step=current,
            steps=[
                StepView(
                    name=s.name,
                    status=str(s.status),
                    attempts=s.attempts,
                    failures=s.failures,
                    compensation_attempts=s.compensation_attempts,
                    compensation_failures=s.compensation_failures,
                    last_error=s.last_error,
                    waiting_for_ledger_since=s.waiting_since,
                )
                for s in state.steps
            ],
            input=dict(record.input),
            data=dict(record.data),
            idempotency_key=record.idempotency_key,
            created_at=record.created_at,
            updated_at=record.updated_at,
            history=[
                HistoryView(at=h.at, kind=h.kind, detail=dict(h.detail), actor=h.actor)
                for h in history
            ],
        )


class ErrorBody(BaseModel):
    error: str = Field(description="Stable machine-readable code, e.g. `unknown_saga`.")
    message: str = Field(description="What was wrong, for a human.")
    fields: list[str] = Field(
        default_factory=list,
        description="Dotted paths of the offending fields (`payload.amount_cents`), if any.",
    )
    details: list[dict[str, Any]] = Field(
        default_factory=list, description="Per-field messages, when there are several."
    )
    saga_id: str | None = Field(
        default=None, description="On 409: the saga the Idempotency-Key already started."
    )


class Health(BaseModel):
    status: str
    store: str


def field_path(loc: Sequence[Any], prefix: str = "") -> str:
    """`("items", 0, "sku")` -> `payload.items[0].sku` (with prefix "payload")."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out or "(body)"


def field_errors(errors: Sequence[Mapping[str, Any]], prefix: str = "") -> list[dict[str, Any]]:
    """Pydantic errors as the API reports them: field path, message, error type."""
    return [
        {
            "field": field_path(e.get("loc", ()), prefix),
            "message": e.get("msg", ""),
            "type": e.get("type"),
        }
        for e in errors
    ]
