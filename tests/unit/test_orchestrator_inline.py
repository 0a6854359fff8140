"""Following local steps run inline in the task that ran the first (over the fakes),
one step per transaction (fusing off; tests/unit/test_orchestrator_fused.py has the
fused runs).

Each inline step is its own transaction, as if its message had been delivered; its
message is in the outbox, held back by the reserve, from the transaction before.
"""

from __future__ import annotations

import pytest

from saga.app.steps import Outcome
from saga.core.purpose import Purpose
from saga.core.state import SagaStatus, StepStatus
from saga.core.step_message import StepMessage
from saga.ports.store import StoreUnavailable
from tests.support.orchestrator_world import ORDER, Declined, DriverGone, World


@pytest.fixture
def w() -> World:
    return World(fuse=False)


def unpublished(w: World) -> list[tuple[StepMessage, float]]:
    return [
        (StepMessage.from_body(r.message.body), r.message.delay)
        for r in w.db.tables.outbox
        if not r.published
    ]


def first(w: World) -> tuple[str, StepMessage]:
    """Enqueue a saga and take its first message as the relay would (published)."""
    saga_id = w.orch.enqueue("shop", ORDER).saga_id
    [row] = w.db.tables.outbox
    row.published = True
    return saga_id, StepMessage.from_body(row.message.body)


def test_one_delivery_runs_every_following_local_step_each_once(w: World) -> None:
    saga_id, message = first(w)
    assert w.orch.handle(message, inline=10) is Outcome.APPLIED
    assert w.state(saga_id).status is SagaStatus.COMPLETED
    steps = ["reserve", "charge", "ship", "notify"]
    assert w.effects(saga_id) == [(s, "do") for s in steps]
    # Every step's message was written and recorded in the inbox; none is left for the relay.
    assert len(w.db.tables.outbox) == 4 and unpublished(w) == []
    assert set(w.db.tables.inbox) == {r.message.message_id for r in w.db.tables.outbox}
    # One transaction per step, as if each message had been delivered.
    assert w.db.commits == 1 + 4


def test_budget_spent_releases_the_next_message_for_the_relay(w: World) -> None:
    saga_id, message = first(w)
    w.orch.handle(message, inline=1)
    assert w.effects(saga_id) == [("reserve", "do"), ("charge", "do")]
    [(held, delay)] = unpublished(w)
    assert (held.step, delay) == ("ship", 0.0)
    assert w.orch.handle(held) is Outcome.APPLIED
    assert w.state(saga_id).steps[2].status is StepStatus.DONE


@pytest.mark.parametrize("error", [StoreUnavailable("gone"), DriverGone("reset")])
def test_an_inline_step_that_cannot_commit_leaves_its_message_held_in_the_outbox(
    w: World, error: Exception
) -> None:
    """The worker does not fail the delivered message: the next step's message is
    safe in the outbox and goes out when the reserve passes."""
    w.script.then("charge", "do", error)
    saga_id, message = first(w)
    assert w.orch.handle(message, inline=10) is Outcome.APPLIED
    assert w.effects(saga_id) == [("reserve", "do")]
    [(held, delay)] = unpublished(w)
    assert (held.step, delay) == ("charge", w.orch.inline_reserve)
    # The relay publishes it after the reserve; a worker runs it and the rest inline.
    assert w.orch.handle(held, inline=10) is Outcome.APPLIED
    assert w.state(saga_id).status is SagaStatus.COMPLETED
    assert w.effects(saga_id) == [(s, "do") for s in ["reserve", "charge", "ship", "notify"]]


def test_held_message_delivered_after_its_step_ran_inline_is_a_duplicate(w: World) -> None:
    """The reserve passed while the inline step was running: the relay's copy finds
    the inbox record and does nothing."""
    saga_id, message = first(w)
    w.orch.handle(message, inline=10)
    held = [StepMessage.from_body(r.message.body) for r in w.db.tables.outbox][1]
    assert w.orch.handle(held, inline=10) is Outcome.DUPLICATE
    assert len(w.effects(saga_id)) == 4


def test_failure_and_compensation_run_inline_too(w: World) -> None:
    w.script.then("charge", "do", Declined("card declined"))
    saga_id, message = first(w)
    w.orch.handle(message, inline=10)
    assert w.state(saga_id).status is SagaStatus.COMPENSATED
    assert w.effects(saga_id) == [("reserve", "do"), ("reserve", "undo")]
    assert unpublished(w) == []


def test_a_retry_with_backoff_goes_through_the_outbox_not_inline(w: World) -> None:
    w.script.then("charge", "do", RuntimeError("flaky"))
    saga_id, message = first(w)
    w.orch.handle(message, inline=10)
    [(retry, delay)] = unpublished(w)
    assert (retry.step, retry.attempt, retry.phase) == ("charge", 2, Purpose.DO)
    assert delay > 0 and delay != w.orch.inline_reserve
    assert w.state(saga_id).status is SagaStatus.RUNNING


def test_without_inline_every_message_waits_for_the_relay(w: World) -> None:
    saga_id, message = first(w)
    w.orch.handle(message)
    [(following, delay)] = unpublished(w)
    assert (following.step, delay) == ("charge", 0.0)
    assert w.effects(saga_id) == [("reserve", "do")]
