"""The example saga v2 with its ledger step on a real devnet: fixtures (a plugin of
tests/conftest.py: `client`, the product's GatewayClient on `sagafacts_net`, and
`orchestrator`, the v2 saga over the `engine` store) and what the tests read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient
from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory
from saga.adapters.sql.tables import ledger_attempts
from saga.app.chain import ChainSettings
from saga.app.orchestrator import Orchestrator
from saga.core.definitions import Registry, chain_key
from saga.core.state import SagaStatus
from saga.examples import order_payment
from saga.ports.ledger import VALID
from saga_devnet.protos import transaction_pb2
from tests.support.ledger import CHAINCODE, LedgerNet

STEP = "record_on_ledger"


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
