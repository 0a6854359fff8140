"""A small saga definition and Run, which feeds the state machine one event at a time."""

from __future__ import annotations

from pydantic import BaseModel

from saga.core.definitions import SagaDefinition, Step
from saga.core.machine import Transition, transition
from saga.core.messages import (
    Event,
    Started,
    StepSucceeded,
)
from saga.core.retry import RetryPolicy
from saga.core.state import SagaState, StepStatus


class In(BaseModel):
    pass


class Fatal(Exception):
    pass


def act(ctx: object) -> None:
    return None


def undo(ctx: object) -> None:
    return None


RETRY = RetryPolicy(
    max_attempts=3, initial_backoff=1.0, backoff_multiplier=2.0, non_retryable=("Fatal",)
)
COMP = RetryPolicy(max_attempts=2, initial_backoff=0.5, non_retryable=("Fatal",))

# a, b compensable; p the pivot; z after it.
SAGA = SagaDefinition(
    name="s",
    version=1,
    input_model=In,
    errors=(Fatal,),
    steps=(
        Step("a", act, undo, retry=RETRY, compensation_retry=COMP),
        Step("b", act, undo, retry=RETRY, compensation_retry=COMP),
        Step("p", act, pivot=True, retry=RETRY),
        Step("z", act, retry=RETRY),
    ),
)

OOPS = ("RuntimeError", "Exception")
FATAL = ("Fatal", "Exception")


class Run:
    """Feeds events one by one, checking each is accepted, keeping the state."""

    def __init__(self, definition: SagaDefinition = SAGA) -> None:
        self.d = definition
        self.state = SagaState.new(
            "id-1", definition.name, definition.version, [s.name for s in definition.steps]
        )
        self.commands: list[object] = []

    def feed(self, event: Event, *, accepted: bool = True) -> Transition:
        before = self.state
        t = transition(self.d, self.state, event)
        assert t.accepted is accepted, t.note
        if accepted:
            self.state = t.state
            self.commands.extend(t.commands)
        else:
            assert t.state is before and t.commands == ()
            assert t.note
        return t

    def ok(self, step: str, attempt: int = 1) -> Transition:
        return self.feed(StepSucceeded(step, attempt))

    def status(self, step: str) -> StepStatus:
        return self.state.steps[self.state.step_index(step)].status


def to_pivot_failure() -> Run:
    r = Run()
    r.feed(Started())
    r.ok("a")
    r.ok("b")
    return r
