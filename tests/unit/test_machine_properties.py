"""Property tests of the pure state machine under a hostile broker.

A random saga definition runs against a simulated broker that delivers commands
and the events they produce in random order, duplicates them, and brings back old
events long after they were answered. A worker turns each command into an event
with a random outcome (success, retryable failure, non-retryable failure); in
some runs the worker checks `awaits` first (as the orchestrator does), in others
it blindly runs whatever it is handed, so the machine alone must refuse the
noise. An operator may resume a failed saga or ask a running one to compensate.

The test keeps its own record of what the machine accepted and checks it against
the rules of the design after every event and when the pending work drains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from saga.core.definitions import SagaDefinition
from saga.core.machine import transition, why_not_awaited
from saga.core.messages import (
    Command,
    CompensateRequested,
    CompensationFailed,
    CompensationSucceeded,
    Event,
    ResumeRequested,
    RunCompensation,
    RunStep,
    Started,
    StepFailed,
    StepSucceeded,
)
from saga.core.retry import error_names
from saga.core.state import SagaState, SagaStatus, StepStatus
from tests.unit.strategies import ERRORS, SagaSpec, is_fatal, outcomes, saga_specs

MAX_EXAMPLES = 500
MAX_TICKS = 600


@dataclass
class Model:
    """What the test saw the machine accept, step by step."""

    spec: SagaSpec
    definition: SagaDefinition
    state: SagaState
    done: list[str] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    # failures of the current forward / compensation run of each step (reset on resume)
    failures: dict[str, int] = field(default_factory=dict)
    comp_failures: dict[str, int] = field(default_factory=dict)
    last_attempt: dict[tuple[str, str], int] = field(default_factory=dict)
    # what the worker reported per (phase, step, attempt): the outcome name
    outcome_of: dict[Event, str] = field(default_factory=dict)
    accepted: int = 0
    refused: int = 0

    def index(self, step: str) -> int:
        return self.definition.index(step)

    @property
    def pivot(self) -> int:
        return self.definition.pivot_index

    def check_command(self, c: Command) -> None:
        phase = "do" if isinstance(c, RunStep) else "undo"
        last = self.last_attempt.get((phase, c.step), 0)
        assert c.attempt == last + 1, f"{c} does not follow attempt {last}"
        self.last_attempt[(phase, c.step)] = c.attempt
        if isinstance(c, RunCompensation):
            i = self.index(c.step)
            assert i < self.pivot, f"compensation asked for {c.step} at/after the pivot"
            assert c.step in self.done and c.step not in self.compensated
            # the step to undo is always the latest completed one not yet undone
            remaining = [s for s in reversed(self.done) if s not in self.compensated]
            assert c.step == remaining[0], f"undo {c.step} out of order; expected {remaining[0]}"
        else:
            assert c.step not in self.done, f"{c.step} asked to run again after it was done"
            i = self.index(c.step)
            assert all(s.name in self.done for s in self.definition.steps[:i])

    def apply(self, event: Event) -> tuple[Command, ...]:
        before = self.state
        t = transition(self.definition, before, event)
        if not t.accepted:
            self.refused += 1
            assert t.state is before and t.commands == (), "a refused event changed the state"
            return ()
        self.accepted += 1
        self.state = t.state
        if isinstance(event, StepSucceeded | StepFailed | CompensationSucceeded):
            phase = "do" if isinstance(event, StepSucceeded | StepFailed) else "undo"
            latest = self.last_attempt.get((phase, event.step))
            assert event.attempt == latest, f"accepted {event}; the latest attempt is {latest}"
        if isinstance(event, CompensationFailed):
            latest = self.last_attempt.get(("undo", event.step))
            assert event.attempt == latest, f"accepted {event}; the latest attempt is {latest}"
        spec_of = {s.name: s for s in self.spec.steps}
        match event:
            case StepSucceeded(step=step):
                assert step not in self.done, f"forward effect of {step} accepted twice"
                self.done.append(step)
            case CompensationSucceeded(step=step):
                assert step in self.done, f"compensation of {step}, which never took effect"
                assert step not in self.compensated, f"compensation of {step} accepted twice"
                remaining = [s for s in reversed(self.done) if s not in self.compensated]
                assert step == remaining[0], "compensation out of reverse order"
                self.compensated.append(step)
            case StepFailed(step=step):
                n = self.failures.get(step, 0) + 1
                self.failures[step] = n
                s = spec_of[step]
                fatal = is_fatal(self.outcome_of[event], s.non_retryable)
                retried = [c for c in t.commands if c == RunStep(step, event.attempt + 1, c.delay)]
                if fatal or n >= s.max_attempts:
                    assert not retried, f"{step} retried after it failed for good"
                    if self.index(step) > self.pivot:
                        assert t.state.status is SagaStatus.FAILED and t.state.reason
                        assert t.commands == ()
                else:
                    assert retried, f"{step} not retried after a retryable failure {n}"
                    assert retried[0].delay == min(0.25 * 2 ** (n - 1), 1.0)
            case CompensationFailed(step=step):
                n = self.comp_failures.get(step, 0) + 1
                self.comp_failures[step] = n
                s = spec_of[step]
                fatal = is_fatal(self.outcome_of[event], s.comp_non_retryable)
                if fatal or n >= s.comp_max_attempts:
                    assert t.commands == ()
                    assert t.state.status is SagaStatus.FAILED
                    assert t.state.reason and step in t.state.reason
                else:
                    assert t.commands and t.commands[0].step == step
            case ResumeRequested():
                assert before.status is SagaStatus.FAILED
                cur = before.steps[before.current]
                self.failures[cur.name] = 0
                self.comp_failures[cur.name] = 0
            case CompensateRequested():
                assert not any(s.name in self.done for s in self.definition.steps[self.pivot :]), (
                    "operator compensation accepted after the pivot"
                )
        for c in t.commands:
            self.check_command(c)
        self.check_state()
        return t.commands

    def check_state(self) -> None:
        st_ = self.state
        for i, s in enumerate(st_.steps):
            if s.name in self.compensated:
                assert s.status is StepStatus.COMPENSATED
            elif s.name in self.done:
                assert s.status in (StepStatus.DONE, StepStatus.COMPENSATION_FAILED)
            else:
                assert s.status in (StepStatus.PENDING, StepStatus.FAILED)
            if i >= self.pivot:
                assert s.status is not StepStatus.COMPENSATED
        if st_.status is SagaStatus.COMPLETED:
            assert self.done == [s.name for s in self.definition.steps]
            assert self.compensated == []
        if st_.status is SagaStatus.COMPENSATED:
            assert self.compensated == list(reversed(self.done))
            assert st_.reason, "compensated without saying why"
        if st_.status is SagaStatus.FAILED:
            assert st_.reason, "failed without a reason"
            cur = st_.steps[st_.current]
            if cur.status is StepStatus.FAILED:
                assert st_.current > self.pivot
            else:
                assert cur.status is StepStatus.COMPENSATION_FAILED


def _execute(model: Model, c: Command, outcome: str) -> Event:
    """A worker ran the command; this is the event it reports."""
    if outcome == "ok":
        event: Event = (
            StepSucceeded(c.step, c.attempt)
            if isinstance(c, RunStep)
            else CompensationSucceeded(c.step, c.attempt)
        )
    else:
        exc = ERRORS[outcome](f"{outcome} at {c.step}#{c.attempt}")
        cls = StepFailed if isinstance(c, RunStep) else CompensationFailed
        event = cls(c.step, c.attempt, error_names(exc), str(exc))
    # an event and its duplicates must carry the same outcome
    model.outcome_of.setdefault(event, outcome)
    return event


def _something_awaited(model: Model, pending: list[Command | Event]) -> bool:
    """The saga waits on at least one item that is still on its way."""
    for item in pending:
        if isinstance(item, RunStep | RunCompensation):
            if why_not_awaited(model.state, item) is None:
                return True
        elif transition(model.definition, model.state, item).accepted:
            return True
    return False


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=saga_specs(), checks_awaits=st.booleans(), data=st.data())
def test_random_sagas_under_a_hostile_broker(
    spec: SagaSpec, checks_awaits: bool, data: st.DataObject
) -> None:
    definition = spec.build()
    state = SagaState.new("s-1", definition.name, definition.version, [s.name for s in spec.steps])
    model = Model(spec, definition, state)
    pending: list[Command | Event] = list(model.apply(Started()))
    history: list[Event] = []
    resumes_left = data.draw(st.integers(0, 2), label="resumes")
    compensate_at = data.draw(st.integers(-1, 40), label="operator compensates at tick")
    # the broker's noise is bounded, as a real broker's is: every run can end
    noise_left = data.draw(st.integers(0, 30), label="noise budget")

    ticks = 0
    while True:
        if not pending:
            assert model.state.status.terminal, f"lost saga: {model.state.status}, nothing pending"
            if model.state.status is SagaStatus.FAILED and resumes_left:
                resumes_left -= 1
                pending.append(ResumeRequested("ops", "try again"))
                continue
            break
        assert model.state.status.terminal or _something_awaited(model, pending), (
            f"saga is {model.state.status} but waits for nothing on its way"
        )
        ticks += 1
        assert ticks < MAX_TICKS, "the run does not end"
        if ticks == compensate_at:
            pending.append(CompensateRequested("ops", "cancel"))
        # reordering: any pending item may go next, the rest are held back
        i = data.draw(st.integers(0, len(pending) - 1), label="deliver")
        item = pending[i]
        chaos = data.draw(st.integers(0, 9), label="chaos") if noise_left else 9
        if chaos in (0, 1):
            noise_left -= 1
        if chaos != 0:
            pending.pop(i)  # 0: delivered but not acked, so it comes again
        if chaos == 1 and history:
            # an old event comes back long after it was answered
            pending.append(data.draw(st.sampled_from(history), label="old event"))
        if isinstance(item, RunStep | RunCompensation):
            if checks_awaits and why_not_awaited(model.state, item) is not None:
                continue
            event = _execute(model, item, data.draw(outcomes, label="outcome"))
            pending.append(event)
            history.append(event)
        else:
            pending.extend(model.apply(item))

    # the run drained: the end is terminal and says what happened
    final = model.state
    assert final.status.terminal
    note_event(f"ends {final.status}")
    note_event(f"refused events: {'some' if model.refused else 'none'}")
    if final.status is SagaStatus.COMPLETED:
        assert all(s.status is StepStatus.DONE for s in final.steps)
    elif final.status is SagaStatus.COMPENSATED:
        assert all(s.status is not StepStatus.DONE for s in final.steps)
        assert not any(s in model.done for s in [x.name for x in spec.steps[model.pivot :]])
    else:
        assert final.reason
    assert model.accepted >= 1
