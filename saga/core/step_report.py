"""The setbacks a worker met while it handled one step message.

For the saga, a step that raised is handled: the failure is recorded, the next
attempt or the compensation is scheduled, and the message is acked (outcome
"applied"). Monitoring must still show the step as failed, so the orchestrator
notes each failure and ledger wait it applies while `collect()` is open. It sees
every one: inline steps run inside the same call, and the chain executor applies
its events through the orchestrator. A context variable carries the list because
the executor calls back into the orchestrator without passing it along.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

from saga.core.messages import CompensationFailed, Event, LedgerWait, StepFailed
from saga.core.state import SagaState, SagaStatus


class Then(StrEnum):
    """What the saga does about a setback."""

    RETRY = "runs again"  # the step (or compensation) gets another attempt
    WAIT = "waits for the ledger"  # the same attempt runs again when the ledger answers
    COMPENSATE = "failed for good; compensating"
    OPERATOR = "failed for good; the saga needs an operator"


@dataclass(frozen=True)
class Setback:
    step: str
    compensation: bool
    attempt: int
    error: str  # "OrderRejected: order 7 rejected"
    then: Then

    @property
    def final(self) -> bool:
        """The step or compensation will not run again by itself."""
        return self.then in (Then.COMPENSATE, Then.OPERATOR)

    def describe(self) -> str:
        what = f"compensation of {self.step}" if self.compensation else self.step
        return f"{what} attempt {self.attempt}: {self.error} ({self.then})"


_current: ContextVar[list[Setback] | None] = ContextVar("saga_step_setbacks", default=None)


@contextmanager
def collect() -> Iterator[list[Setback]]:
    """Gather the setbacks noted in this block (in this thread or task)."""
    found: list[Setback] = []
    token = _current.set(found)
    try:
        yield found
    finally:
        _current.reset(token)


def note(event: Event, after: SagaState) -> None:
    """Record an applied event's setback, if it is one and someone collects."""
    found = _current.get()
    if found is None:
        return
    setback = setback_of(event, after)
    if setback is not None:
        found.append(setback)


def setback_of(event: Event, after: SagaState) -> Setback | None:
    """The setback an accepted event stands for; `after` is the saga's state it led to."""
    if after.status is SagaStatus.FAILED:
        final = Then.OPERATOR
    elif after.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED):
        final = Then.COMPENSATE
    else:
        final = Then.RETRY
    match event:
        case StepFailed():
            # A step that fails while running and leaves the saga running is retried.
            return Setback(event.step, False, event.attempt, _error(event), final)
        case CompensationFailed():
            then = Then.OPERATOR if final is Then.OPERATOR else Then.RETRY
            return Setback(event.step, True, event.attempt, _error(event), then)
        case LedgerWait():
            then = Then.WAIT if event.retry_in is not None else Then.OPERATOR
            return Setback(event.step, event.compensation, event.attempt, event.error, then)
    return None


def _error(event: StepFailed | CompensationFailed) -> str:
    kind = event.error_types[0] if event.error_types else "Error"
    return f"{kind}: {event.message}"
