"""The pure state machine, case by case."""

from __future__ import annotations

import pytest

from saga.core.definitions import SagaDefinition, Step
from saga.core.machine import transition, why_not_awaited
from saga.core.messages import (
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
from saga.core.state import SagaState, SagaStatus, StepStatus
from tests.support.machine_run import (
    FATAL,
    OOPS,
    In,
    Run,
    act,
    to_pivot_failure,
)


def test_happy_path() -> None:
    r = Run()
    assert r.feed(Started()).commands == (RunStep("a", 1),)
    assert r.ok("a").commands == (RunStep("b", 1),)
    assert r.ok("b").commands == (RunStep("p", 1),)
    assert r.ok("p").commands == (RunStep("z", 1),)
    t = r.ok("z")
    assert t.commands == ()
    assert r.state.status is SagaStatus.COMPLETED
    assert all(s.status is StepStatus.DONE for s in r.state.steps)
    assert r.state.reason is None


def test_start_twice_refused() -> None:
    r = Run()
    r.feed(Started())
    r.feed(Started(), accepted=False)


def test_retry_with_backoff_then_success() -> None:
    r = Run()
    r.feed(Started())
    t1 = r.feed(StepFailed("a", 1, OOPS, "boom"))
    assert t1.commands == (RunStep("a", 2, 1.0),)
    t2 = r.feed(StepFailed("a", 2, OOPS, "boom again"))
    assert t2.commands == (RunStep("a", 3, 2.0),)
    a = r.state.steps[0]
    assert (a.attempts, a.failures, a.status) == (3, 2, StepStatus.PENDING)
    assert a.last_error == "RuntimeError: boom again"
    r.ok("a", 3)
    assert r.status("a") is StepStatus.DONE
    assert r.state.steps[0].last_error is None
    assert r.state.steps[1].attempts == 1


def test_retries_spent_compensates() -> None:
    r = Run()
    r.feed(Started())
    r.ok("a")
    for n in (1, 2):
        r.feed(StepFailed("b", n, OOPS, "x"))
    t = r.feed(StepFailed("b", 3, OOPS, "x"))
    assert t.commands == (RunCompensation("a", 1),)
    assert r.state.status is SagaStatus.COMPENSATING
    assert r.status("b") is StepStatus.FAILED
    assert "'b'" in (r.state.reason or "")


def test_non_retryable_failure_compensates_in_reverse_order() -> None:
    r = Run()
    r.feed(Started())
    r.ok("a")
    r.ok("b")
    # make p fail for good: the pivot failing compensates everything before it.
    t = r.feed(StepFailed("p", 1, FATAL, "rejected"))
    assert t.commands == (RunCompensation("b", 1),)
    assert r.state.status is SagaStatus.COMPENSATING
    assert r.state.reason and "'p'" in r.state.reason and "Fatal: rejected" in r.state.reason
    t = r.feed(CompensationSucceeded("b", 1))
    assert t.commands == (RunCompensation("a", 1),)
    t = r.feed(CompensationSucceeded("a", 1))
    assert t.commands == ()
    assert r.state.status is SagaStatus.COMPENSATED
    assert [s.status for s in r.state.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
        StepStatus.PENDING,
    ]
    assert r.state.reason  # why it was compensated stays readable


def test_first_step_failing_compensates_nothing() -> None:
    r = Run()
    r.feed(Started())
    t = r.feed(StepFailed("a", 1, FATAL, "no"))
    assert t.commands == ()
    assert r.state.status is SagaStatus.COMPENSATED


def test_failure_after_pivot_retried_forward_then_failed_never_compensated() -> None:
    r = to_pivot_failure()
    r.ok("p")
    assert r.feed(StepFailed("z", 1, OOPS, "x")).commands == (RunStep("z", 2, 1.0),)
    assert r.feed(StepFailed("z", 2, OOPS, "x")).commands == (RunStep("z", 3, 2.0),)
    t = r.feed(StepFailed("z", 3, OOPS, "still down"))
    assert t.commands == ()
    assert r.state.status is SagaStatus.FAILED
    assert r.state.reason and "'z'" in r.state.reason and "after the pivot" in r.state.reason
    assert not any(isinstance(c, RunCompensation) for c in r.commands)
    assert [s.status for s in r.state.steps[:3]] == [StepStatus.DONE] * 3


def test_non_retryable_after_pivot_fails_at_once() -> None:
    r = to_pivot_failure()
    r.ok("p")
    t = r.feed(StepFailed("z", 1, FATAL, "x"))
    assert t.commands == ()
    assert r.state.status is SagaStatus.FAILED


def test_compensation_retried_then_failing_for_good_is_failed_with_reason() -> None:
    r = to_pivot_failure()
    r.feed(StepFailed("p", 1, FATAL, "rejected"))
    t = r.feed(CompensationFailed("b", 1, OOPS, "undo down"))
    assert t.commands == (RunCompensation("b", 2, 0.5),)
    t = r.feed(CompensationFailed("b", 2, OOPS, "undo still down"))
    assert t.commands == ()
    assert r.state.status is SagaStatus.FAILED
    assert r.status("b") is StepStatus.COMPENSATION_FAILED
    reason = r.state.reason or ""
    assert "compensation of step 'b'" in reason and "undo still down" in reason
    assert "'p'" in reason  # the original cause is kept
    # nothing else happens by itself: 'a' is not compensated behind b's back
    assert r.status("a") is StepStatus.DONE


def test_non_retryable_compensation_failure_fails_at_once() -> None:
    r = to_pivot_failure()
    r.feed(StepFailed("p", 1, FATAL, "rejected"))
    assert r.feed(CompensationFailed("b", 1, FATAL, "x")).commands == ()
    assert r.state.status is SagaStatus.FAILED


def test_resume_failed_forward_step() -> None:
    r = to_pivot_failure()
    r.ok("p")
    r.feed(StepFailed("z", 1, FATAL, "x"))
    t = r.feed(ResumeRequested("ops", "fixed the mail server"))
    assert t.commands == (RunStep("z", 2),)
    assert "ops" in t.note
    assert r.state.status is SagaStatus.RUNNING
    assert r.state.reason is None
    z = r.state.steps[3]
    assert (z.status, z.attempts, z.failures) == (StepStatus.PENDING, 2, 0)
    # the fresh budget: two more retryable failures are retried
    assert r.feed(StepFailed("z", 2, OOPS, "x")).commands == (RunStep("z", 3, 1.0),)
    r.feed(StepSucceeded("z", 3))
    assert r.state.status is SagaStatus.COMPLETED


def test_resume_failed_compensation() -> None:
    r = to_pivot_failure()
    r.feed(StepFailed("p", 1, FATAL, "rejected"))
    r.feed(CompensationFailed("b", 1, FATAL, "x"))
    t = r.feed(ResumeRequested("ops", "undo fixed"))
    assert t.commands == (RunCompensation("b", 2),)
    assert r.state.status is SagaStatus.COMPENSATING
    r.feed(CompensationFailed("b", 1, OOPS, "late"), accepted=False)
    # the resumed compensation has a fresh budget: one retryable failure is retried
    assert r.feed(CompensationFailed("b", 2, OOPS, "blip")).commands == (
        RunCompensation("b", 3, 0.5),
    )
    r.feed(CompensationSucceeded("b", 3))
    r.feed(CompensationSucceeded("a", 1))
    assert r.state.status is SagaStatus.COMPENSATED


@pytest.mark.parametrize("phase", ["running", "compensating", "completed", "compensated"])
def test_resume_refused_unless_failed(phase: str) -> None:
    r = Run()
    r.feed(Started())
    if phase == "compensating":
        r.ok("a")
        r.feed(StepFailed("b", 1, FATAL, "x"))
    elif phase == "completed":
        for s in "abpz":
            r.ok(s)
    elif phase == "compensated":
        r.feed(StepFailed("a", 1, FATAL, "x"))
    assert r.state.status == phase
    r.feed(ResumeRequested("ops", "why"), accepted=False)


def test_operator_compensate_before_pivot() -> None:
    r = Run()
    r.feed(Started())
    r.ok("a")
    r.ok("b")  # p (the pivot) is now in flight
    t = r.feed(CompensateRequested("ops", "customer cancelled"))
    assert t.commands == (RunCompensation("b", 1),)
    assert "customer cancelled" in (r.state.reason or "")
    assert r.status("p") is StepStatus.FAILED
    # the pivot's answer arriving now is refused, and its command is no longer awaited
    assert why_not_awaited(r.state, RunStep("p", 1)) is not None
    r.feed(StepSucceeded("p", 1), accepted=False)
    r.feed(CompensationSucceeded("b", 1))
    r.feed(CompensationSucceeded("a", 1))
    assert r.state.status is SagaStatus.COMPENSATED


def test_operator_compensate_refused_after_pivot() -> None:
    r = to_pivot_failure()
    r.ok("p")
    r.feed(CompensateRequested("ops", "too late"), accepted=False)
    r.feed(StepFailed("z", 1, FATAL, "x"))
    assert r.state.status is SagaStatus.FAILED
    r.feed(CompensateRequested("ops", "still too late"), accepted=False)


def test_operator_compensate_refused_when_compensation_failed() -> None:
    r = to_pivot_failure()
    r.feed(StepFailed("p", 1, FATAL, "x"))
    r.feed(CompensationFailed("b", 1, FATAL, "x"))
    r.feed(CompensateRequested("ops", "again"), accepted=False)


@pytest.mark.parametrize("end", ["compensating", "compensated"])
def test_operator_compensate_refused_when_not_running(end: str) -> None:
    r = Run()
    r.feed(Started())
    r.ok("a")
    r.feed(StepFailed("b", 1, FATAL, "x"))
    if end == "compensated":
        r.feed(CompensationSucceeded("a", 1))
    r.feed(CompensateRequested("ops", "x"), accepted=False)


STALE_CASES: list[tuple[str, Event]] = [
    ("duplicate success", StepSucceeded("a", 1)),
    ("old attempt succeeded", StepSucceeded("b", 1)),
    ("old attempt failed", StepFailed("b", 1, OOPS, "x")),
    ("future attempt", StepSucceeded("b", 3)),
    ("step not reached", StepSucceeded("p", 1)),
    ("unknown step", StepSucceeded("nope", 1)),
    ("compensation while running", CompensationSucceeded("a", 1)),
    ("compensation failure while running", CompensationFailed("a", 1, OOPS, "x")),
]


@pytest.mark.parametrize(("label", "event"), STALE_CASES, ids=[c[0] for c in STALE_CASES])
def test_stale_and_duplicate_events_change_nothing(label: str, event: Event) -> None:
    r = Run()
    r.feed(Started())
    r.ok("a")
    r.feed(StepFailed("b", 1, OOPS, "x"))  # b now at attempt 2
    r.feed(event, accepted=False)


COMPENSATING_STALE: list[tuple[str, Event]] = [
    ("step answer while compensating", StepSucceeded("p", 1)),
    ("compensation of the wrong step", CompensationSucceeded("a", 1)),
    ("compensation duplicate attempt", CompensationSucceeded("b", 2)),
    ("compensation of a step after pivot", CompensationSucceeded("p", 1)),
]


@pytest.mark.parametrize(
    ("label", "event"), COMPENSATING_STALE, ids=[c[0] for c in COMPENSATING_STALE]
)
def test_stale_events_while_compensating(label: str, event: Event) -> None:
    r = to_pivot_failure()
    r.feed(StepFailed("p", 1, FATAL, "x"))
    r.feed(event, accepted=False)
    r.feed(CompensationSucceeded("b", 1))
    r.feed(CompensationSucceeded("b", 1), accepted=False)  # duplicate
    r.feed(CompensationSucceeded("a", 1))
    for e in (StepSucceeded("z", 1), CompensationSucceeded("a", 1), Started()):
        r.feed(e, accepted=False)  # anything after the end


def test_events_for_another_definition_raise() -> None:
    other = SagaDefinition(name="other", version=1, input_model=In, steps=(Step("a", act),))
    state = SagaState.new("id", "s", 1, ["a", "b", "p", "z"])
    with pytest.raises(ValueError, match="runs 's' v1"):
        transition(other, state, Started())


def test_awaits_matches_transition() -> None:
    r = Run()
    r.feed(Started())
    assert why_not_awaited(r.state, RunStep("a", 1)) is None
    assert why_not_awaited(r.state, RunStep("a", 2)) is not None
    assert why_not_awaited(r.state, RunCompensation("a", 1)) is not None
    r.ok("a")
    r.feed(StepFailed("b", 1, FATAL, "x"))
    assert why_not_awaited(r.state, RunCompensation("a", 1)) is None
    assert why_not_awaited(r.state, RunStep("b", 1)) is not None
