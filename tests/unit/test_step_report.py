"""handle_reporting() names every failure and ledger wait it applied, and the step
task turns them into the state Flower shows (over the fakes)."""

from __future__ import annotations

import pickle

import pytest
from celery.exceptions import Retry

from saga.app.steps import Outcome
from saga.core.purpose import Purpose
from saga.core.step_message import StepMessage
from saga.core.step_report import Setback, Then, collect
from saga.entrypoints.celery.step_states import (
    NothingToDo,
    StepFailedError,
    StepRetriedError,
    end_task,
)
from tests.support import chain_world as chain
from tests.support.orchestrator_world import ORDER, Declined, World


def first(w: World) -> StepMessage:
    w.orch.enqueue("shop", ORDER)
    message = w.next_message()
    assert message is not None
    return message


def test_a_retried_step_is_reported_with_its_error() -> None:
    w = World()
    w.script.then("reserve", "do", RuntimeError("warehouse busy"))
    outcome, setbacks = w.orch.handle_reporting(first(w))
    assert outcome is Outcome.APPLIED
    assert setbacks == [Setback("reserve", False, 1, "RuntimeError: warehouse busy", Then.RETRY)]
    assert not setbacks[0].final


def test_a_failure_among_inline_steps_is_reported_and_so_are_compensation_retries() -> None:
    w = World()
    w.script.then("ship", "do", Declined("no stock"))
    w.script.then("charge", "undo", RuntimeError("bank down"))
    # One delivery runs reserve, charge, ship (fails for good) and compensations inline.
    message = first(w)
    outcome, setbacks = w.orch.handle_reporting(message, inline=10)
    assert outcome is Outcome.APPLIED
    assert setbacks == [
        Setback("ship", False, 1, "Declined: no stock", Then.COMPENSATE),
        Setback("charge", True, 1, "RuntimeError: bank down", Then.RETRY),
    ]
    with pytest.raises(StepFailedError, match=r"ship attempt 1: Declined: no stock") as caught:
        end_task(message, str(outcome), setbacks)
    assert caught.value.inline == "ship"  # the delivered message was reserve's


def test_a_compensation_failing_for_good_needs_an_operator() -> None:
    w = World()
    w.script.then("ship", "do", Declined("no stock"))
    w.script.then("charge", "undo", *[RuntimeError("bank down")] * 5)
    w.orch.enqueue("shop", ORDER)
    found: list[Setback] = []
    for _ in range(30):
        message = w.next_message()
        if message is None:
            break
        w.delivered.add(message.message_id)
        found += w.orch.handle_reporting(message)[1]
    assert found[-1].compensation and found[-1].then is Then.OPERATOR, found


def test_a_chain_refusal_and_a_ledger_wait_are_reported() -> None:
    w = chain.World()
    w.start(amount="0")
    reports = []
    while (message := w.next_message()) is not None:
        reports.append(w.orch.handle_reporting(message))
    refused = [s for _, setbacks in reports for s in setbacks]
    assert [(s.step, s.then) for s in refused] == [("ledger", Then.COMPENSATE)], refused
    assert "INVALID_ARGUMENT" in refused[0].error

    w = chain.World()
    w.start()
    w.ledger.unreachable = True
    message = w.next_message()
    assert message is not None and w.orch.handle_reporting(message)[1] == []  # the local step
    message = w.next_message()
    assert message is not None
    outcome, setbacks = w.orch.handle_reporting(message)
    assert outcome is Outcome.WAITING
    assert [(s.step, s.then) for s in setbacks] == [("ledger", Then.WAIT)]


def test_nothing_is_collected_outside_a_report() -> None:
    w = World()
    w.script.then("reserve", "do", RuntimeError("warehouse busy"))
    message = first(w)
    with collect() as outer:
        pass
    assert w.orch.handle(message) is Outcome.APPLIED
    assert outer == []


def step(name: str, phase: Purpose = Purpose.DO) -> StepMessage:
    return StepMessage("m-1", "s-1", "shop", 1, name, 1, phase)


def test_the_task_ends_as_the_steps_went() -> None:
    assert end_task(step("ship"), "applied", []) == "applied"
    assert end_task(step("ship"), "submitted", []) == "submitted"
    retried = Setback("notify", False, 1, "CustomerUnreachable: busy", Then.RETRY)
    with pytest.raises(Retry) as caught:
        end_task(step("notify"), "applied", [retried])
    assert isinstance(caught.value.exc, StepRetriedError)
    assert "notify attempt 1: CustomerUnreachable: busy" in str(caught.value.exc)
    assert caught.value.exc.inline == ""
    waited = Setback("ledger", True, 2, "ledger unavailable: peer down", Then.WAIT)
    with pytest.raises(Retry, match="compensation of ledger attempt 2") as caught:
        end_task(step("charge", Purpose.UNDO), "applied", [waited])
    assert caught.value.exc.inline == "ledger.compensate"
    for outcome in ("stale", "duplicate"):
        with pytest.raises(NothingToDo, match=outcome):
            end_task(step("ship"), outcome, [])


def test_the_errors_survive_the_trip_from_the_pool_process() -> None:
    failed = StepFailedError("charge attempt 1: Declined: no (failed for good)", "charge")
    back = pickle.loads(pickle.dumps(failed))
    assert (type(back), str(back), back.inline) == (type(failed), str(failed), "charge")
    retry = pickle.loads(pickle.dumps(Retry("x", exc=StepRetriedError("x", "notify"))))
    assert isinstance(retry.exc, StepRetriedError) and retry.exc.inline == "notify"
