"""MarkedStuck: the sweeper hands a saga that makes no progress to an operator."""

from __future__ import annotations

from saga.core.messages import (
    CompensationSucceeded,
    MarkedStuck,
    ResumeRequested,
    RunCompensation,
    RunStep,
    Started,
    StepFailed,
    StepSucceeded,
)
from saga.core.state import SagaStatus, StepStatus
from tests.support.machine_run import FATAL, Run


def test_stuck_forward_fails_the_step_and_resume_runs_it_again() -> None:
    r = Run()
    r.feed(Started())
    r.ok("a")
    t = r.feed(MarkedStuck("sweeper", "no progress for 300s"))
    assert t.commands == ()
    assert r.state.status is SagaStatus.FAILED
    assert r.status("b") is StepStatus.FAILED
    assert (r.state.reason or "").startswith("stuck: no progress for 300s")
    # The attempt that was in flight is stale now.
    r.feed(StepSucceeded("b", 1), accepted=False)
    assert r.feed(ResumeRequested("op", "fixed")).commands == (RunStep("b", 2),)
    r.ok("b", 2)
    assert r.status("b") is StepStatus.DONE


def test_stuck_while_compensating_fails_the_compensation_and_resume_compensates_again() -> None:
    r = Run()
    r.feed(Started())
    r.ok("a")
    r.ok("b")
    r.feed(StepFailed("p", 1, FATAL, "no"))
    assert r.state.status is SagaStatus.COMPENSATING
    r.feed(MarkedStuck("sweeper", "undo of b idle"))
    assert r.state.status is SagaStatus.FAILED
    assert r.status("b") is StepStatus.COMPENSATION_FAILED
    assert "compensating because" in (r.state.reason or "")
    assert r.feed(ResumeRequested("op", "fixed")).commands == (RunCompensation("b", 2),)
    r.feed(CompensationSucceeded("b", 2))
    assert r.state.current == 0 and r.state.status is SagaStatus.COMPENSATING


def test_a_terminal_or_failed_saga_cannot_be_marked_stuck() -> None:
    r = Run()
    r.feed(Started())
    for step in ("a", "b", "p", "z"):
        r.ok(step)
    r.feed(MarkedStuck("sweeper", "late"), accepted=False)


def test_resumed_compensation_gets_back_the_reason_it_compensates_for() -> None:
    r = Run()
    r.feed(Started())
    r.ok("a")
    r.ok("b")
    r.feed(StepFailed("p", 1, FATAL, "order rejected"))
    why = r.state.reason
    assert why and "order rejected" in why
    r.feed(MarkedStuck("sweeper", "undo of b idle"))
    assert r.state.reason != why
    r.feed(ResumeRequested("op", "fixed"))
    assert r.state.reason == why
    r.feed(CompensationSucceeded("b", 2))
    r.feed(CompensationSucceeded("a", 1))
    assert r.state.status is SagaStatus.COMPENSATED and r.state.reason == why
