"""The chain step protocol, driven through the orchestrator with in-memory fakes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from saga.chain import ChaincodeRefused, ChainSettings, LedgerNotConfigured
from saga.core.chain import AttemptState
from saga.core.definitions import (
    ChainCall,
    Registry,
    SagaDefinition,
    Step,
    StepContext,
    StepKind,
    chain_key,
)
from saga.core.retry import RetryPolicy
from saga.core.state import SagaStatus, StepStatus
from saga.core.step_message import StepMessage
from saga.orchestrator import OperatorActionRefused, Orchestrator, Outcome
from tests.fakes import FakeDatabase, FakeLedger, valid_functions


class Pay(BaseModel):
    order_id: str
    amount: str = "1250"
    fail_after: bool = False


class AfterFailed(Exception):
    pass


def _local(ctx: StepContext) -> Mapping[str, Any] | None:
    ctx.session.insert("events", saga_id=ctx.saga_id, step=ctx.step, action="do")
    return None


def _undo_local(ctx: StepContext) -> None:
    ctx.session.insert("events", saga_id=ctx.saga_id, step=ctx.step, action="undo")


def _after(ctx: StepContext) -> None:
    assert isinstance(ctx.input, Pay)
    if ctx.input.fail_after:
        raise AfterFailed("rejected")


def _args(ctx: StepContext) -> list[str]:
    assert isinstance(ctx.input, Pay)
    return [ctx.input.order_id, ctx.input.amount, "EUR", "c1"]


def definition(timeout: float = 30.0, attempts: int = 3) -> SagaDefinition:
    return SagaDefinition(
        name="pay",
        version=1,
        input_model=Pay,
        errors=(AfterFailed, ChaincodeRefused),
        steps=(
            Step("reserve", _local, compensation=_undo_local),
            Step(
                "ledger",
                kind=StepKind.CHAIN,
                chain=ChainCall(
                    "sagafacts",
                    "RecordPayment",
                    _args,
                    undo_function="ReversePayment",
                    undo_args=lambda ctx: ["undo"],
                ),
                retry=RetryPolicy(
                    max_attempts=attempts, initial_backoff=0, non_retryable=("ChaincodeRefused",)
                ),
                timeout=timeout,
            ),
            Step(
                "confirm",
                _after,
                pivot=True,
                retry=RetryPolicy(max_attempts=1, non_retryable=("AfterFailed",)),
            ),
        ),
    )


class World:
    def __init__(self, *, timeout: float = 30.0, attempts: int = 3, ledger: bool = True) -> None:
        self.db = FakeDatabase()
        self.ledger = FakeLedger()
        self.registry = Registry([definition(timeout, attempts)])
        self.orch = self.host("host-a") if ledger else Orchestrator(self.registry, self.db.uow)

    def host(self, name: str) -> Orchestrator:
        settings = ChainSettings(recheck_delay=1.0, worker=name)
        return Orchestrator(
            self.registry, self.db.uow, ledger=lambda: self.ledger, chain_settings=settings
        )

    def next_message(self) -> StepMessage | None:
        for row in self.db.tables.outbox:
            if not row.published:
                row.published = True
                return StepMessage.from_body(row.message.body)
        return None

    def drive(self, *, cut: bool = True, limit: int = 100) -> list[Outcome]:
        outcomes = []
        for _ in range(limit):
            message = self.next_message()
            if message is None:
                return outcomes
            if cut:
                self.ledger.cut()
            outcomes.append(self.orch.handle(message))
        raise AssertionError(f"saga did not settle in {limit} messages")

    def run(self, n: int) -> None:
        """Handle the next n messages, cutting no block."""
        for _ in range(n):
            message = self.next_message()
            assert message is not None
            self.orch.handle(message)

    def start(self, **payload: Any) -> str:
        return self.orch.enqueue("pay", {"order_id": "o-1", **payload}).saga_id

    def status(self, saga_id: str) -> SagaStatus:
        record = self.db.saga(saga_id)
        assert record is not None
        return record.state.status

    def attempts(self, purpose: str = "do") -> list[Any]:
        return [a for a in self.db.attempts() if a.purpose == purpose]


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


def test_ledger_unreachable_with_a_transaction_in_flight_goes_to_an_operator() -> None:
    w = World(timeout=0.001)
    saga_id = w.start()
    w.ledger.drop_submit_reply = 1
    w.run(2)
    w.ledger.unreachable = True
    w.drive(cut=False)
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.FAILED
    assert "ledger outcome unknown" in (record.state.reason or "")
    # Not compensated: the transaction may still commit.
    assert [r["action"] for r in w.db.business_rows("events")] == ["do"]
    assert len(w.ledger.prepared) == 1


def test_endorsement_unreachable_before_any_attempt_is_not_in_doubt() -> None:
    w = World(attempts=2)
    saga_id = w.start()
    w.ledger.unreachable = True
    w.drive(cut=False)
    record = w.db.saga(saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.COMPENSATED
    assert "LedgerUnavailable" in (record.state.reason or "")


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
    w.drive(cut=False)
    assert w.status(saga_id) is SagaStatus.FAILED
    # The step is FAILED, but its transaction is still unknown and may commit.
    with pytest.raises(OperatorActionRefused, match="may still commit"):
        w.orch.compensate(saga_id, actor="op", why="test")
    assert [r["action"] for r in w.db.business_rows("events")] == ["do"]
