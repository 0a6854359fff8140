"""The chain step protocol, driven through the orchestrator with in-memory fakes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from saga.app.chain import LedgerNotConfigured
from saga.app.errors import OperatorActionRefused
from saga.app.steps import Outcome
from saga.core.chain import AttemptState
from saga.core.definitions import (
    chain_key,
)
from saga.core.ledger_faults import Operation, classify
from saga.core.retry import OutagePolicy
from saga.core.state import SagaStatus, StepStatus
from saga.core.step_message import StepMessage
from saga.ports.ledger import EndorseFailed
from tests.fakes import valid_functions
from tests.support.chain_world import World


def test_happy_path_one_valid_transaction_recorded_in_the_saga() -> None:
    w = World()
    saga_id = w.start()
    outcomes = w.drive()
    assert w.status(saga_id) is SagaStatus.COMPLETED
    assert Outcome.SUBMITTED in outcomes
    [attempt] = w.attempts()
    assert attempt.state is AttemptState.COMMITTED and attempt.code == 0
    assert attempt.worker == "host-a"
    assert w.ledger.valid_txids() == [attempt.txid]
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.data["ledger"] == {"txid": attempt.txid, "key": f"{saga_id}/ledger/do"}
    assert w.ledger.record(chain_key(saga_id, "ledger", "do"))["txid"] == attempt.txid  # type: ignore[index]


def test_prepared_is_committed_before_submit() -> None:
    w = World()
    saga_id = w.start()
    seen: list[list[Any]] = []
    original = w.ledger.submit

    def submit(prepared: Any, *, timeout: float | None = None) -> Any:
        seen.append(w.attempts())
        return original(prepared, timeout=timeout)

    w.ledger.submit = submit  # type: ignore[method-assign]
    w.drive()
    assert w.status(saga_id) is SagaStatus.COMPLETED
    assert seen and seen[0] and seen[0][0].state is AttemptState.PREPARED


def test_lost_submit_reply_resubmits_the_same_envelope_never_a_new_txid() -> None:
    w = World()
    saga_id = w.start()
    # Not ordered at all, the reply lost: only resubmitting the stored bytes can help.
    w.ledger.submit_unavailable = 1
    w.drive()
    assert w.status(saga_id) is SagaStatus.COMPLETED
    assert len(w.ledger.prepared) == 1
    [txid] = w.ledger.prepared
    assert [c for c in w.ledger.calls if c[0] == "submit"] == [("submit", txid)] * 2
    assert w.ledger.valid_txids() == [txid]


def test_lost_reply_after_ordering_keeps_prepared_then_verifies() -> None:
    w = World()
    saga_id = w.start()
    w.ledger.drop_submit_reply = 1
    w.run(2)  # reserve, then ledger: ordered but the reply lost
    [attempt] = w.attempts()
    assert attempt.state is AttemptState.PREPARED
    w.drive()
    assert w.status(saga_id) is SagaStatus.COMPLETED
    assert len(w.ledger.prepared) == 1 and len(w.ledger.valid_txids()) == 1


def test_already_recorded_at_endorsement_is_done_not_failed() -> None:
    w = World()
    saga_id = w.start()
    key = chain_key(saga_id, "ledger", "do")
    w.ledger.state[key] = ({"key": key, "txid": "earlier-tx", "kind": "payment"}, 1)
    w.drive()
    assert w.status(saga_id) is SagaStatus.COMPLETED
    assert w.ledger.prepared == [] and w.attempts() == []
    record = w.db.saga(saga_id)
    assert record is not None and record.data["ledger"]["txid"] == "earlier-tx"


def test_mvcc_loser_gets_a_new_txid_only_after_the_key_check_says_absent() -> None:
    w = World()
    saga_id = w.start()
    w.ledger.force_mvcc = 1
    w.drive()
    assert w.status(saga_id) is SagaStatus.COMPLETED
    first, second = w.ledger.prepared
    calls = w.ledger.calls
    assert calls.index(("evaluate", chain_key(saga_id, "ledger", "do"))) < calls.index(
        ("prepare", second)
    )
    assert calls.index(("status", first)) < calls.index(("prepare", second))
    assert w.ledger.valid_txids() == [second]
    codes = {a.txid: a.code for a in w.attempts()}
    assert codes == {first: 11, second: 0}


def test_two_hosts_racing_one_valid_transaction_and_the_loser_never_submits() -> None:
    w = World()
    saga_id = w.start()
    host_b = w.host("host-b")
    message = None
    while True:  # up to the chain step's message
        message = w.next_message()
        assert message is not None
        if message.step == "ledger":
            break
        w.orch.handle(message)

    def host_b_meanwhile(_: Any) -> None:
        # The same step redelivered to another host while host A is endorsing.
        redelivered = StepMessage(**{**message.__dict__, "message_id": "redelivered"})
        assert host_b.handle(redelivered) is Outcome.SUBMITTED

    w.ledger.on_prepare = host_b_meanwhile
    assert w.orch.handle(message) is Outcome.SUBMITTED
    w.drive()
    assert w.status(saga_id) is SagaStatus.COMPLETED
    a_txid, b_txid = w.ledger.prepared
    submitted = {t for kind, t in w.ledger.calls if kind == "submit"}
    # Host A endorsed a proposal of its own; it must never reach the orderer.
    assert a_txid not in submitted and submitted == {b_txid}
    assert w.ledger.valid_txids() == [b_txid]
    assert [a.txid for a in w.attempts()] == [b_txid]
    assert w.attempts()[0].worker == "host-b"


def test_chain_step_compensated_exactly_once_by_its_reversal() -> None:
    w = World()
    saga_id = w.start(fail_after=True)
    w.ledger.drop_submit_reply = 0
    messages_seen = 0
    while (message := w.next_message()) is not None:
        messages_seen += 1
        w.ledger.cut()
        if message.phase == "undo" and message.step == "ledger":
            # A duplicate delivery of the reversal's message, on top of the original.
            w.ledger.drop_submit_reply = 1
            w.orch.handle(message)
            again = {**message.__dict__, "message_id": message.message_id + "x"}
            w.orch.handle(StepMessage(**again))
            continue
        w.orch.handle(message)
    assert w.status(saga_id) is SagaStatus.COMPENSATED
    assert valid_functions(w.ledger) == ["RecordPayment", "ReversePayment"]
    do_key = chain_key(saga_id, "ledger", "do")
    undo_key = chain_key(saga_id, "ledger", "undo")
    assert w.ledger.record(do_key)["reversed_by"] == undo_key  # type: ignore[index]
    assert len(w.attempts("undo")) == 1
    actions = [(r["step"], r["action"]) for r in w.db.business_rows("events")]
    assert actions == [("reserve", "do"), ("reserve", "undo")]


def test_business_refusal_fails_for_good_and_compensates_earlier_steps() -> None:
    w = World()
    saga_id = w.start(amount="0")
    w.drive()
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.COMPENSATED
    assert record.state.steps[1].status is StepStatus.FAILED
    assert "INVALID_ARGUMENT" in (record.state.steps[1].last_error or "")
    assert w.ledger.valid_txids() == [] and w.attempts() == []


def test_ledger_unreachable_with_a_transaction_in_flight_waits_then_goes_to_an_operator() -> None:
    w = World(timeout=0.001)
    saga_id = w.start()
    w.ledger.drop_submit_reply = 1
    w.run(2)
    w.ledger.unreachable = True
    outcomes = w.drive(cut=False, tick=5.0)
    assert Outcome.WAITING in outcomes
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.FAILED
    assert "could not reach the ledger" in (record.state.reason or "")
    # Not compensated: the transaction may still commit; and no attempt was spent.
    assert [r["action"] for r in w.db.business_rows("events")] == ["do"]
    assert record.state.steps[1].attempts == 1 and record.state.steps[1].failures == 0
    assert len(w.ledger.prepared) == 1


def test_ledger_outage_spends_no_attempt_and_the_step_completes_when_it_is_back() -> None:
    w = World(attempts=1)
    saga_id = w.start()
    w.run(1)  # the local step
    w.ledger.unreachable = True
    for _ in range(8):  # eight looks, 3 s apart: far more than the step's one attempt
        w.clock.advance(3.0)
        assert w.orch.handle(w.next_message()) is Outcome.WAITING  # type: ignore[arg-type]
    record = w.db.saga(saga_id)
    assert record is not None
    ledger_step = record.state.steps[1]
    assert record.state.status is SagaStatus.RUNNING
    assert (ledger_step.attempts, ledger_step.failures) == (1, 0)
    assert ledger_step.waiting_since == datetime(2026, 12, 6, 0, 0, 3, tzinfo=UTC)
    with w.db.uow() as uow:
        assert uow.sagas.count_waiting_for_ledger() == {"pay": 1}
    w.ledger.unreachable = False
    w.drive()
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.COMPLETED
    assert record.state.steps[1].waiting_since is None
    assert len(w.ledger.valid_txids()) == 1
    kinds = [h.kind for h in w.db.tables.history if h.saga_id == saga_id]
    # One history line when the wait began, one when the ledger answered: not one per look.
    assert kinds.count("waiting for the ledger") == 1
    assert kinds.count("ledger reached again") == 1


def test_the_wait_between_looks_grows_and_is_capped() -> None:
    policy = OutagePolicy(budget=100.0, first_delay=1.0, max_delay=10.0)
    assert [policy.retry_in(t) for t in (0, 4, 30, 95, 100)] == [1.0, 2.0, 10.0, 5.0, None]
    with pytest.raises(ValueError):
        OutagePolicy(budget=0)


def test_outage_budget_spent_before_any_attempt_goes_to_an_operator_uncompensated() -> None:
    w = World(attempts=2)
    saga_id = w.start()
    w.ledger.unreachable = True
    w.drive(cut=False, tick=5.0)
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.FAILED
    assert "could not reach the ledger" in (record.state.reason or "")
    assert [r["action"] for r in w.db.business_rows("events")] == ["do"]
    # The operator resumes once the ledger is back, and the saga completes.
    w.ledger.unreachable = False
    w.orch.resume(saga_id, actor="op", why="peer back")
    w.drive()
    assert w.status(saga_id) is SagaStatus.COMPLETED


def test_misconfigured_channel_goes_to_an_operator_at_once_naming_the_setting() -> None:
    w = World()
    saga_id = w.start()

    def wrong_channel(*args: Any, **kwargs: Any) -> Any:
        text = "failed to get config for channel [nochannel]: channel does not exist"
        fault = classify(Operation.ENDORSE, "UNAVAILABLE", text)
        raise EndorseFailed(text, fault=fault)

    w.ledger.prepare = wrong_channel  # type: ignore[method-assign]
    outcomes = w.drive(cut=False)
    assert outcomes.count(Outcome.WAITING) == 1
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.FAILED
    assert "SAGA_FABRIC_CHANNEL" in (record.state.reason or "")
    assert [r["action"] for r in w.db.business_rows("events")] == ["do"]


def test_compensation_waits_out_an_outage_instead_of_failing() -> None:
    w = World()
    saga_id = w.start(fail_after=True)
    while w.status(saga_id) is not SagaStatus.COMPENSATING:
        w.ledger.cut()
        w.run(1)
    w.ledger.unreachable = True  # before the reversal of the ledger step is prepared
    for _ in range(5):
        message = w.next_message()
        if message is None:
            break
        w.clock.advance(2.0)
        w.orch.handle(message)
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.COMPENSATING
    assert record.state.steps[1].waiting_since is not None
    w.ledger.unreachable = False
    w.drive()
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.COMPENSATED
    assert [a.purpose for a in w.db.attempts()].count("undo") == 1


def test_no_ledger_configured_says_which_settings_to_set() -> None:
    w = World(ledger=False)
    w.start()
    with pytest.raises(LedgerNotConfigured, match="SAGA_FABRIC_PROFILE"):
        w.drive()


def test_operator_cannot_abandon_a_chain_step_whose_transaction_may_commit() -> None:
    w = World()
    saga_id = w.start()
    w.run(2)
    with pytest.raises(OperatorActionRefused, match="may still commit"):
        w.orch.compensate(saga_id, actor="op", why="test")


def test_operator_cannot_compensate_a_chain_step_that_gave_up_in_doubt() -> None:
    w = World(timeout=0.001)
    saga_id = w.start()
    w.ledger.drop_submit_reply = 1
    w.run(2)
    w.ledger.unreachable = True
    w.drive(cut=False, tick=5.0)
    assert w.status(saga_id) is SagaStatus.FAILED
    # The step is FAILED, but its transaction is still unknown and may commit.
    with pytest.raises(OperatorActionRefused, match="may still commit"):
        w.orch.compensate(saga_id, actor="op", why="test")
    assert [r["action"] for r in w.db.business_rows("events")] == ["do"]
