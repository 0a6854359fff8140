"""Following local steps fused into the delivered step's transaction (over the fakes).

One commit for the run; the saga's state, history and next messages written once
at its end; the fused steps' messages never written. A step that raises in the
run rolls it all back, and the run is done again one step per transaction, with
the failure recorded against its own step (and its action not run again).
"""

from __future__ import annotations

import pytest

from saga.app.steps import Outcome
from saga.core.purpose import Purpose
from saga.core.state import SagaStatus, StepStatus
from saga.core.step_message import StepMessage
from tests.support.orchestrator_world import ORDER, Declined, DriverGone, World


def first(w: World) -> tuple[str, StepMessage]:
    """Enqueue a saga and take its first message as the relay would (published)."""
    saga_id = w.orch.enqueue("shop", ORDER).saga_id
    [row] = w.db.tables.outbox
    row.published = True
    return saga_id, StepMessage.from_body(row.message.body)


def unpublished(w: World) -> list[tuple[StepMessage, float]]:
    return [
        (StepMessage.from_body(r.message.body), r.message.delay)
        for r in w.db.tables.outbox
        if not r.published
    ]


def history(w: World, saga_id: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.detail.get("step")) for e in w.db.tables.history if e.saga_id == saga_id]


ALL = ["reserve", "charge", "ship", "notify"]


def test_one_delivery_runs_the_whole_saga_in_one_transaction() -> None:
    w = World()
    saga_id, message = first(w)
    commits = w.db.commits
    assert w.orch.handle(message, inline=10) is Outcome.APPLIED
    assert w.db.commits == commits + 1
    assert w.state(saga_id).status is SagaStatus.COMPLETED
    assert w.effects(saga_id) == [(s, "do") for s in ALL]
    # Only the delivered message was ever written or recorded.
    assert [m.message_id for m in w.db.outbox_messages()] == [message.message_id]
    assert set(w.db.tables.inbox) == {message.message_id}
    # The history still tells each step, in order.
    assert history(w, saga_id) == [
        ("started", None),
        *[("step succeeded", s) for s in ALL],
        ("saga completed", None),
    ]
    # Each step saw the output of those before it.
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.data["notify"] == {"by": "notify", "seen": ["charge", "reserve", "ship"]}


def test_a_redelivered_message_of_a_fused_run_is_a_duplicate() -> None:
    w = World()
    _, message = first(w)
    w.orch.handle(message, inline=10)
    before = w.db.snapshot()
    assert w.orch.handle(message, inline=10) is Outcome.DUPLICATE
    assert w.db.snapshot() == before


def test_the_inline_budget_bounds_the_run_and_the_next_message_is_due_now() -> None:
    w = World()
    saga_id, message = first(w)
    commits = w.db.commits
    w.orch.handle(message, inline=2)
    # Three steps in one commit; no held message to release afterwards.
    assert w.db.commits == commits + 1
    assert w.effects(saga_id) == [("reserve", "do"), ("charge", "do"), ("ship", "do")]
    [(following, delay)] = unpublished(w)
    assert (following.step, delay) == ("notify", 0.0)


def test_a_step_failing_in_the_run_is_recorded_against_itself_and_not_run_again() -> None:
    w = World()
    w.script.then("charge", "do", Declined("card declined"))
    saga_id, message = first(w)
    w.orch.handle(message, inline=10)
    assert w.state(saga_id).status is SagaStatus.COMPENSATED
    # The fused run (reserve, charge) was rolled back; reserve ran again on its
    # own, charge's failure was recorded without running it again.
    assert w.script.calls == [
        ("reserve", "do", 1),
        ("charge", "do", 1),
        ("reserve", "do", 1),
        ("reserve", "undo", 1),
    ]
    assert w.effects(saga_id) == [("reserve", "do"), ("reserve", "undo")]
    assert history(w, saga_id) == [
        ("started", None),
        ("step succeeded", "reserve"),
        ("step failed", "charge"),
        ("saga compensating", None),
        ("compensation succeeded", "reserve"),
        ("saga compensated", None),
    ]
    steps = w.state(saga_id).steps
    assert (steps[1].status, steps[1].failures, steps[1].last_error) == (
        StepStatus.FAILED,
        1,
        "Declined: card declined",
    )
    assert unpublished(w) == []


def test_a_retryable_failure_in_the_run_is_retried_through_the_outbox() -> None:
    w = World()
    w.script.then("ship", "do", RuntimeError("warehouse busy"))
    saga_id, message = first(w)
    w.orch.handle(message, inline=10)
    assert w.effects(saga_id) == [("reserve", "do"), ("charge", "do")]
    [(retry, delay)] = unpublished(w)
    assert (retry.step, retry.attempt, retry.phase) == ("ship", 2, Purpose.DO)
    assert delay > 0 and delay != w.orch.inline_reserve
    # The retry's delivery runs the rest of the saga fused.
    assert w.orch.handle(retry, inline=10) is Outcome.APPLIED
    assert w.state(saga_id).status is SagaStatus.COMPLETED
    assert w.effects(saga_id) == [(s, "do") for s in ALL]


def test_the_delivered_steps_own_failure_is_recorded_as_without_fusing() -> None:
    w = World()
    w.script.then("reserve", "do", Declined("no funds"))
    saga_id, message = first(w)
    w.orch.handle(message, inline=10)
    assert w.script.calls == [("reserve", "do", 1)]
    assert w.state(saga_id).status is SagaStatus.COMPENSATED
    assert w.effects(saga_id) == []


def test_compensations_fuse_too() -> None:
    w = World(2)
    w.script.then("ship", "do", Declined("out of stock"))
    saga_id = w.orch.enqueue("shop", ORDER).saga_id
    [row] = w.db.tables.outbox
    row.published = True
    w.orch.handle(StepMessage.from_body(row.message.body), inline=10)
    assert w.state(saga_id).status is SagaStatus.COMPENSATED
    assert w.effects(saga_id) == [
        ("reserve", "do"),
        ("charge", "do"),
        ("audit", "do"),
        ("audit", "undo"),
        ("charge", "undo"),
        ("reserve", "undo"),
    ]
    # The fused run was rolled back at ship and redone step by step (charge,
    # audit and ship from held messages); then, ship's failure recorded, the
    # compensations fused: audit's undo from its held message, charge's and
    # reserve's with it.
    written = [StepMessage.from_body(m.body) for m in w.db.outbox_messages()]
    assert [(m.step, m.phase) for m in written] == [
        ("reserve", "do"),
        ("charge", "do"),
        ("audit", "do"),
        ("ship", "do"),
        ("audit", "undo"),
    ]


def test_an_external_step_is_never_fused() -> None:
    w = World(external=frozenset({"ship"}))
    saga_id, message = first(w)
    commits = w.db.commits
    w.orch.handle(message, inline=10)
    assert w.state(saga_id).status is SagaStatus.COMPLETED
    assert w.effects(saga_id) == [(s, "do") for s in ALL]
    # reserve + charge fused; ship alone, from its held message; notify from the
    # message ship's transaction held (fused with nothing: it is the last step).
    assert w.db.commits == commits + 3
    written = [StepMessage.from_body(m.body).step for m in w.db.outbox_messages()]
    assert written == ["reserve", "ship", "notify"]
    assert unpublished(w) == []


def test_a_run_that_reaches_an_external_step_stops_before_it() -> None:
    w = World(external=frozenset({"charge"}))
    saga_id, message = first(w)
    w.orch.handle(message, inline=10)
    assert w.state(saga_id).status is SagaStatus.COMPLETED
    written = [StepMessage.from_body(m.body).step for m in w.db.outbox_messages()]
    # reserve alone (charge external follows), charge alone, ship + notify fused.
    assert written == ["reserve", "charge", "ship"]


@pytest.mark.parametrize("fuse", [True, False])
def test_a_dropped_connection_in_a_fused_step_keeps_nothing(fuse: bool) -> None:
    """Fused, the delivered message's transaction holds the run: the error goes up
    (the message is retried) and nothing is kept. One step per transaction, the
    inline step's trouble is left to its held message."""
    w = World(fuse=fuse)
    w.script.then("charge", "do", DriverGone("reset"))
    saga_id, message = first(w)
    before = w.db.snapshot()
    if fuse:
        with pytest.raises(DriverGone):
            w.orch.handle(message, inline=10)
        assert w.db.snapshot() == before
        assert w.orch.handle(message, inline=10) is Outcome.APPLIED
    else:
        assert w.orch.handle(message, inline=10) is Outcome.APPLIED
        [(held, _)] = unpublished(w)
        w.orch.handle(held, inline=10)
    assert w.state(saga_id).status is SagaStatus.COMPLETED
    assert w.effects(saga_id) == [(s, "do") for s in ALL]
