"""The one JSON view of a saga: GET /sagas/{id}, `saga show --json`, `saga wait --json`.

`saga_view` builds the whole view (the API's `SagaView` validates it, `saga show
--json` prints it); `summary_view` builds its summary fields, which are also
what `saga list --json` and `saga wait --json` give for each saga (they read
summaries from the store's search, not whole sagas; wait adds its own fields:
outcome, wanted, waited_seconds).

The fields, as the three shapes had them before they became one (the union):

- summary: id, saga, version, status, reason, idempotency_key, step,
  step_status, phase, attempt, created, updated, idle_seconds,
  waiting_for_ledger_since (from `saga list` / `show` / `wait`);
- the API's: saga_id (= id), current_step (= step), created_at and updated_at
  (= created, updated), input, data, steps, history;
- each step: name, kind (None when the definition is not deployed where the view
  is built), status, current, attempts, failures, compensation_attempts,
  compensation_failures, last_error, waiting_for_ledger_since, ledger_attempts
  (never the signed envelope);
- each history entry: at, kind, detail, actor, why (the detail's `why`, if any).

A finished saga (completed, compensated) has no current step: step, current_step,
step_status, phase and attempt are null. A failed one's is the step to fix.

No web framework, SQLAlchemy or gRPC is imported here: the Python client loads
the API's schemas, which use this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from saga.core.definitions import Registry
from saga.core.errors import OrchestrationError
from saga.core.state import SagaState, SagaStatus, StepStatus
from saga.ports.store import HistoryEntry, LedgerAttemptRecord, SagaRecord

_FINISHED = ("completed", "compensated")


class Summary(Protocol):
    """A saga's row and current step (`saga.adapters.sql.saga_search.SagaSummary`)."""

    @property
    def saga_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def status(self) -> SagaStatus: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def idempotency_key(self) -> str | None: ...
    @property
    def created_at(self) -> datetime | None: ...
    @property
    def updated_at(self) -> datetime | None: ...
    @property
    def step(self) -> str | None: ...
    @property
    def step_status(self) -> StepStatus | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def compensation_attempts(self) -> int: ...
    @property
    def waiting_since(self) -> datetime | None: ...


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def idle_seconds(value: datetime | None, now: datetime | None = None) -> float | None:
    """Seconds since `value`, as a number for scripts."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return round(max(0.0, ((now or datetime.now(UTC)) - value).total_seconds()), 1)


def summary_view(s: Summary, now: datetime | None = None) -> dict[str, Any]:
    """The fields every saga has in the API, `saga list`, `saga show` and `saga wait` --json."""
    status = str(s.status)
    finished = status in _FINISHED
    undo = status == "compensating" or str(s.step_status) == "compensation_failed"
    return {
        "id": s.saga_id,
        "saga": s.name,
        "version": s.version,
        "status": status,
        "reason": s.reason,
        "idempotency_key": s.idempotency_key,
        "step": None if finished else s.step,
        "step_status": None if finished or s.step_status is None else str(s.step_status),
        "phase": None if finished else ("undo" if undo else "do"),
        "attempt": None if finished else (s.compensation_attempts if undo else s.attempts),
        "created": iso(s.created_at),
        "updated": iso(s.updated_at),
        "idle_seconds": idle_seconds(s.updated_at, now),
        "waiting_for_ledger_since": None if finished else iso(s.waiting_since),
    }


class _RecordSummary:
    """A whole saga record seen as a summary (what `SagaSummary.of` computes)."""

    def __init__(self, record: SagaRecord) -> None:
        state = record.state
        step = state.steps[state.current] if 0 <= state.current < len(state.steps) else None
        self.saga_id = state.saga_id
        self.name = state.name
        self.version = state.version
        self.status = state.status
        self.reason = state.reason
        self.idempotency_key = record.idempotency_key
        self.created_at = record.created_at
        self.updated_at = record.updated_at
        self.step = step.name if step else None
        self.step_status = step.status if step else None
        self.attempts = step.attempts if step else 0
        self.compensation_attempts = step.compensation_attempts if step else 0
        self.waiting_since = step.waiting_since if step else None


def step_kinds(registry: Registry, state: SagaState) -> dict[str, str]:
    """Each step's kind (local, chain); empty when the definition is not deployed here."""
    try:
        definition = registry.get(state.name, state.version)
    except OrchestrationError:
        return {}
    return {s.name: str(s.kind) for s in definition.steps}


def code_name(code: int | None) -> str | None:
    """A validation code's Fabric name (its number without the protobuf bindings)."""
    if code is None:
        return None
    try:
        from saga.adapters.fabric.messages import validation_code_name
    except ImportError:  # protobuf bindings missing in a slim install
        return str(code)
    return validation_code_name(code)


def attempt_view(a: LedgerAttemptRecord) -> dict[str, Any]:
    # Never the envelope: it is a signed transaction, not something to paste around.
    return {
        "txid": a.txid,
        "purpose": a.purpose,
        "channel": a.channel,
        "state": str(a.state),
        "code": a.code,
        "code_name": code_name(a.code),
        "block": a.block,
        "worker": a.worker,
        "created": iso(a.created_at),
        "submitted": iso(a.submitted_at),
        "committed": iso(a.committed_at),
    }


def saga_view(
    record: SagaRecord,
    history: Iterable[HistoryEntry],
    attempts: Iterable[LedgerAttemptRecord] = (),
    kinds: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The whole view of one saga (see the module's docstring for its fields)."""
    state = record.state
    summary = summary_view(_RecordSummary(record), now)
    attempts = list(attempts)
    kinds = kinds or {}
    marked = summary["step"] is not None
    return {
        **summary,
        "saga_id": state.saga_id,
        "current_step": summary["step"],
        "created_at": summary["created"],
        "updated_at": summary["updated"],
        "input": dict(record.input),
        "data": dict(record.data),
        "steps": [
            {
                "name": s.name,
                "kind": kinds.get(s.name),
                "status": str(s.status),
                "current": marked and i == state.current,
                "attempts": s.attempts,
                "failures": s.failures,
                "compensation_attempts": s.compensation_attempts,
                "compensation_failures": s.compensation_failures,
                "last_error": s.last_error,
                "waiting_for_ledger_since": iso(s.waiting_since),
                "ledger_attempts": [attempt_view(a) for a in attempts if a.step == s.name],
            }
            for i, s in enumerate(state.steps)
        ],
        "history": [
            {
                "at": h.at.isoformat(),
                "kind": h.kind,
                "detail": h.detail,
                "actor": h.actor,
                "why": h.detail.get("why") if isinstance(h.detail, dict) else None,
            }
            for h in history
        ],
    }
