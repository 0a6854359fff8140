"""Events fed to the state machine and commands it asks the edges to run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class StepSucceeded:
    step: str
    attempt: int


@dataclass(frozen=True)
class StepFailed:
    step: str
    attempt: int
    error_types: tuple[str, ...]
    message: str
    # A chain step whose ledger transaction may still commit. Giving up on it must
    # not compensate (the effect may yet appear); an operator decides instead.
    in_doubt: bool = False


@dataclass(frozen=True)
class CompensationSucceeded:
    step: str
    attempt: int


@dataclass(frozen=True)
class CompensationFailed:
    step: str
    attempt: int
    error_types: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class LedgerWait:
    """A chain step (or its compensation) cannot reach the ledger now; not a failure.

    `since` is when this outage began for the step (the executor keeps the first
    one it saw); `retry_in` is when to look again, or None when the outage budget
    is spent, or when no wait can help (a misconfiguration): then an operator
    decides, and nothing is compensated.
    """

    step: str
    attempt: int
    compensation: bool
    error: str
    since: datetime
    retry_in: float | None


@dataclass(frozen=True)
class LedgerReached:
    """A chain step that waited for the ledger got through to it again."""

    step: str
    attempt: int
    compensation: bool


@dataclass(frozen=True)
class ResumeRequested:
    """Operator: try the failed step or compensation again, with a fresh budget."""

    actor: str
    why: str


@dataclass(frozen=True)
class CompensateRequested:
    """Operator: abandon a saga that has not passed its pivot and undo what it did."""

    actor: str
    why: str


@dataclass(frozen=True)
class MarkedStuck:
    """The sweeper gave up re-driving a saga that makes no progress: an operator decides.

    Forward, the current step fails (`resume` runs it again with attempt + 1);
    compensating, its compensation fails (`resume` compensates again). A message
    still in flight then finds the saga failed and is ignored as stale.
    """

    actor: str
    why: str


Event = (
    Started
    | StepSucceeded
    | StepFailed
    | CompensationSucceeded
    | CompensationFailed
    | LedgerWait
    | LedgerReached
    | ResumeRequested
    | CompensateRequested
    | MarkedStuck
)


@dataclass(frozen=True)
class RunStep:
    step: str
    attempt: int
    delay: float = 0.0


@dataclass(frozen=True)
class RunCompensation:
    step: str
    attempt: int
    delay: float = 0.0


Command = RunStep | RunCompensation
