"""The HTTP API's request and response bodies.

Plain pydantic models with no FastAPI import, so the Python client can parse
responses into the same types without loading the web framework.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saga.entrypoints.saga_view import saga_view
from saga.ports.store import HistoryEntry, LedgerAttemptRecord, SagaRecord


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
    # local or chain; None when the definition is not deployed where the view was built.
    kind: str | None = None
    status: str
    # True for the step the saga is at (never for a finished saga).
    current: bool = False
    attempts: int
    failures: int
    compensation_attempts: int
    compensation_failures: int
    last_error: str | None = None
    # Set while the step waits for an unreachable ledger: when that began.
    waiting_for_ledger_since: datetime | None = None
    # A chain step's ledger transactions (txid, state, code, block...; never the envelope).
    ledger_attempts: list[dict[str, Any]] = Field(default_factory=list)


class HistoryView(BaseModel):
    at: datetime
    kind: str
    detail: dict[str, Any]
    actor: str | None = None
    # The detail's `why` (an operator's reason), if any.
    why: Any = None


class SagaView(BaseModel):
    """One saga: the view `saga show --json` prints too (saga.entrypoints.saga_view)."""

    saga_id: str
    # The same id, under the name `saga list`, `show` and `wait` use.
    id: str | None = None
    saga: str
    version: int
    status: str
    reason: str | None = None
    # The step the saga is at; None once it is finished (completed or compensated).
    # For a failed saga, the step to fix.
    current_step: str | None = None
    # The same, with its status, phase (do / undo) and attempt number.
    step: str | None = None
    step_status: str | None = None
    phase: str | None = None
    attempt: int | None = None
    steps: list[StepView]
    input: dict[str, Any]
    data: dict[str, Any]
    idempotency_key: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # created_at and updated_at as ISO text, and seconds since the last progress.
    created: str | None = None
    updated: str | None = None
    idle_seconds: float | None = None
    waiting_for_ledger_since: datetime | None = None
    history: list[HistoryView] = Field(default_factory=list)

    @classmethod
    def from_record(
        cls,
        record: SagaRecord,
        history: list[HistoryEntry],
        attempts: Iterable[LedgerAttemptRecord] = (),
        kinds: Mapping[str, str] | None = None,
    ) -> SagaView:
        return cls.model_validate(saga_view(record, history, attempts, kinds))


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
