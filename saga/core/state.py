"""The state of one saga, as the state machine sees it (immutable values)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum


class SagaStatus(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    # Needs an operator: a step after the pivot or a compensation failed for good.
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


class StepStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


@dataclass(frozen=True)
class StepState:
    name: str
    status: StepStatus = StepStatus.PENDING
    # Tries started so far; a message names the attempt it drives, so a stale or
    # duplicated message is recognised by its number and ignored.
    attempts: int = 0
    # Failed tries since the step was last (re)started; compared with max_attempts.
    failures: int = 0
    compensation_attempts: int = 0
    compensation_failures: int = 0
    last_error: str | None = None
    # Set while a chain step (or its compensation) waits for an unreachable ledger:
    # when that outage began. Cleared by any answer that is not an outage.
    waiting_since: datetime | None = None


@dataclass(frozen=True)
class SagaState:
    saga_id: str
    name: str
    version: int
    status: SagaStatus
    current: int
    steps: tuple[StepState, ...]
    reason: str | None = None

    @classmethod
    def new(cls, saga_id: str, name: str, version: int, step_names: list[str]) -> SagaState:
        return cls(
            saga_id=saga_id,
            name=name,
            version=version,
            status=SagaStatus.RUNNING,
            current=0,
            steps=tuple(StepState(n) for n in step_names),
        )

    def with_step(self, index: int, **changes: object) -> SagaState:
        steps = list(self.steps)
        steps[index] = replace(steps[index], **changes)  # type: ignore[arg-type]
        return replace(self, steps=tuple(steps))

    def step_index(self, name: str) -> int:
        for i, s in enumerate(self.steps):
            if s.name == name:
                return i
        raise KeyError(name)
