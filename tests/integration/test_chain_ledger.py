"""The example saga v2 with its ledger step, on real PostgreSQL, a real devnet and the
real sagafacts chaincode, driven through the orchestrator (no broker, no watcher).

The outbox is drained in publish order; the chain step's delayed re-check
messages are what re-drive it after a submit (the settle loop), so each test
also shows a step progressing with no commit watcher running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from saga.chain import ChainSettings
from saga.core.definitions import Registry, chain_key
from saga.core.state import SagaStatus
from saga.core.step_message import StepMessage
from saga.examples import order_payment
from saga.fabric import GatewayClient
from saga.ledger_port import MVCC_READ_CONFLICT, VALID
from saga.orchestrator import Orchestrator
from saga.store import TRANSIENT_ERRORS, SqlOutboxReader, SqlUnitOfWorkFactory, create_engine
from saga.store.tables import ledger_attempts
from saga_devnet.protos import transaction_pb2
from tests.support.ledger import CHAINCODE, LedgerNet, sagafacts_net_fixture  # noqa: F401

STEP = "record_on_ledger"


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    with engine.begin() as c:
        # tests/support/postgres.py empties the tables it knows; this one is newer.
        c.execute(delete(ledger_attempts))
    yield engine
    engine.dispose()


@pytest.fixture
def client(sagafacts_net: LedgerNet) -> Iterator[GatewayClient]:
    sagafacts_net.devnet.reset_faults()
    yield sagafacts_net.gateway()
    sagafacts_net.devnet.reset_faults()


@pytest.fixture
def orchestrator(engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet) -> Orchestrator:
    registry = order_payment.register_with_ledger(Registry())
    assert registry.get(order_payment.NAME).version == 2
    return Orchestrator(
        registry,
        SqlUnitOfWorkFactory(engine),
        transient_errors=TRANSIENT_ERRORS,
        ledger=lambda: client,
        chain_settings=ChainSettings(
            channel=sagafacts_net.channel, status_timeout=2.0, recheck_delay=0.3
        ),
    )


def run(orchestrator: Orchestrator, engine: Engine, *, timeout: float = 90.0) -> list[str]:
    reader = SqlOutboxReader(engine)
    outcomes: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with reader.claim(20) as batch:
            reader.mark_published([p.id for p in batch])
        for pending in batch:
            outcomes.append(str(orchestrator.handle(StepMessage.from_body(pending.body))))
        if not batch:
            if reader.pending_count() == 0:
                return outcomes
            time.sleep(0.05)  # a re-check or a retry waits out its delay
    raise AssertionError(f"the saga did not settle in {timeout}s: {outcomes}")


def payment(order: str, simulate: str = "none") -> dict[str, Any]:
    return {
        "order_id": order,
        "customer_id": "c-1",
        "amount_cents": 1250,
        "currency": "EUR",
        "simulate": simulate,
    }


def attempts(engine: Engine, saga_id: str, purpose: str) -> list[Any]:
    with engine.connect() as c:
        return list(
            c.execute(
                select(ledger_attempts)
                .where(ledger_attempts.c.saga_id == saga_id, ledger_attempts.c.purpose == purpose)
                .order_by(ledger_attempts.c.id)
            )
        )


def record(client: GatewayClient, channel: str, key: str) -> dict[str, Any]:
    payload = client.evaluate(channel, CHAINCODE, "GetRecord", [key])
    assert payload, f"no record under {key}"
    value: dict[str, Any] = json.loads(payload)
    return value


def qscc_code(client: GatewayClient, channel: str, txid: str) -> int:
    raw = client.evaluate(channel, "qscc", "GetTransactionByID", [channel, txid])
    return int(transaction_pb2.ProcessedTransaction.FromString(raw).validationCode)


def status_of(orchestrator: Orchestrator, saga_id: str) -> SagaStatus:
    saga, _ = orchestrator.get(saga_id)
    return saga.state.status


def one_valid(
    engine: Engine, client: GatewayClient, channel: str, saga_id: str, purpose: str
) -> str:
    rows = attempts(engine, saga_id, purpose)
    valid = [r for r in rows if r.code == VALID]
    assert len(valid) == 1, rows
    assert all(r.state == "committed" for r in rows), rows
    txid = str(valid[0].txid)
    assert qscc_code(client, channel, txid) == VALID
    for other in rows:
        if other.txid != txid:
            assert qscc_code(client, channel, other.txid) != VALID
    assert record(client, channel, chain_key(saga_id, STEP, purpose))["txid"] == txid
    return txid


def test_v2_saga_completes_with_exactly_one_valid_transaction(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-1")).saga_id
    outcomes = run(orchestrator, engine)
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
    run(orchestrator, engine)
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
    run(orchestrator, engine)
    assert status_of(orchestrator, saga_id) is SagaStatus.COMPLETED
    one_valid(engine, client, sagafacts_net.channel, saga_id, "do")
    assert len(attempts(engine, saga_id, "do")) == 1


def test_commit_status_hang_only_delays_the_step(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    sagafacts_net.devnet.set_faults(commit_status_hang=2)
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-4")).saga_id
    run(orchestrator, engine)
    assert status_of(orchestrator, saga_id) is SagaStatus.COMPLETED
    one_valid(engine, client, sagafacts_net.channel, saga_id, "do")
    assert len(attempts(engine, saga_id, "do")) == 1


def test_mvcc_conflict_new_txid_only_after_the_first_is_final(
    orchestrator: Orchestrator, engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    sagafacts_net.devnet.set_faults(force_mvcc_conflict=1)
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-5")).saga_id
    run(orchestrator, engine)
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
    run(orchestrator, engine)
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
    run(orchestrator, engine)
    saga, _ = orchestrator.get(saga_id)
    assert saga.state.status is SagaStatus.COMPENSATED
    step = saga.state.steps[2]
    assert step.failures == 1
    assert step.last_error is not None and step.last_error.startswith("ChaincodeRefused")
    assert "INVALID_ARGUMENT" in step.last_error
    assert attempts(engine, saga_id, "do") == []
