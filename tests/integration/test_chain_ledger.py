"""The example saga v2 with its ledger step, on real PostgreSQL, a real devnet and the
real sagafacts chaincode, driven through the orchestrator (no broker, no watcher).

The outbox is drained in publish order; the chain step's delayed re-check
messages are what re-drive it after a submit (the settle loop), so each test
also shows a step progressing with no commit watcher running.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient
from saga.app.orchestrator import Orchestrator
from saga.core.definitions import chain_key
from saga.core.state import SagaStatus
from saga.examples import order_payment
from saga.ports.ledger import MVCC_READ_CONFLICT, VALID
from tests.support.chain_ledger import (
    STEP,
    attempts,
    one_valid,
    payment,
    record,
    status_of,
)
from tests.support.ledger import CHAINCODE, LedgerNet
from tests.support.outbox import drive_outbox


def test_v2_saga_completes_with_exactly_one_valid_transaction(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-1")).saga_id
    outcomes = drive_outbox(orchestrator, engine, timeout=90.0)
    assert status_of(orchestrator, saga_id) is SagaStatus.COMPLETED
    assert "submitted" in outcomes
    txid = one_valid(engine, client, sagafacts_net.channel, saga_id, "do")
    saga, _ = orchestrator.get(saga_id)
    assert saga.data[STEP]["txid"] == txid
    assert len(attempts(engine, saga_id, "do")) == 1
    assert attempts(engine, saga_id, "undo") == []


def test_v2_saga_compensated_with_exactly_one_reversal(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-2", "reject_order")).saga_id
    drive_outbox(orchestrator, engine, timeout=90.0)
    assert status_of(orchestrator, saga_id) is SagaStatus.COMPENSATED
    channel = sagafacts_net.channel
    one_valid(engine, client, channel, saga_id, "do")
    one_valid(engine, client, channel, saga_id, "undo")
    original = record(client, channel, chain_key(saga_id, STEP, "do"))
    assert original["reversed_by"] == chain_key(saga_id, STEP, "undo")


def test_lost_submit_reply_keeps_one_txid_and_one_valid_transaction(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    sagafacts_net.devnet.set_faults(drop_submit_reply=1)
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-3")).saga_id
    drive_outbox(orchestrator, engine, timeout=90.0)
    assert status_of(orchestrator, saga_id) is SagaStatus.COMPLETED
    one_valid(engine, client, sagafacts_net.channel, saga_id, "do")
    assert len(attempts(engine, saga_id, "do")) == 1


def test_commit_status_hang_only_delays_the_step(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    sagafacts_net.devnet.set_faults(commit_status_hang=2)
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-4")).saga_id
    drive_outbox(orchestrator, engine, timeout=90.0)
    assert status_of(orchestrator, saga_id) is SagaStatus.COMPLETED
    one_valid(engine, client, sagafacts_net.channel, saga_id, "do")
    assert len(attempts(engine, saga_id, "do")) == 1


def test_mvcc_conflict_new_txid_only_after_the_first_is_final(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    sagafacts_net.devnet.set_faults(force_mvcc_conflict=1)
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-5")).saga_id
    drive_outbox(orchestrator, engine, timeout=90.0)
    assert status_of(orchestrator, saga_id) is SagaStatus.COMPLETED
    txid = one_valid(engine, client, sagafacts_net.channel, saga_id, "do")
    first, second = attempts(engine, saga_id, "do")
    assert (first.code, second.code) == (MVCC_READ_CONFLICT, VALID)
    assert second.txid == txid and second.created_at >= first.committed_at


def test_peer_refusing_endorsement_is_retried_then_compensated_with_no_ledger_effect(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    sagafacts_net.devnet.set_faults(refuse_endorsement="*")
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-6")).saga_id
    drive_outbox(orchestrator, engine, timeout=90.0)
    sagafacts_net.devnet.reset_faults()
    saga, _ = orchestrator.get(saga_id)
    # The peer, not the chaincode, said no: retried up to the policy's limit. Nothing
    # was ever submitted, so the step is settled without effect and the saga compensates.
    assert saga.state.status is SagaStatus.COMPENSATED
    assert saga.state.steps[2].failures == 5
    assert attempts(engine, saga_id, "do") == []
    key = chain_key(saga_id, STEP, "do")
    assert client.evaluate(sagafacts_net.channel, CHAINCODE, "GetRecord", [key]) == b""


def test_chaincode_business_refusal_fails_for_good_at_once(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    # Valid for the saga's schema, refused by the chaincode (control character).
    saga_id = orchestrator.enqueue(
        order_payment.NAME, {**payment("o-7"), "customer_id": "c\x01"}
    ).saga_id
    drive_outbox(orchestrator, engine, timeout=90.0)
    saga, _ = orchestrator.get(saga_id)
    assert saga.state.status is SagaStatus.COMPENSATED
    step = saga.state.steps[2]
    assert step.failures == 1
    assert step.last_error is not None and step.last_error.startswith("ChaincodeRefused")
    assert "INVALID_ARGUMENT" in step.last_error
    assert attempts(engine, saga_id, "do") == []
