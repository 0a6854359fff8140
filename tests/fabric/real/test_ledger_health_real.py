"""The ledger's health and its transactions, told from a real Fabric 2.5 network.

- `saga ledger ping` without flags asks the chaincode the saga definitions name
  (read-only GetRecord, then an endorsement of it that is never submitted), so a
  chaincode that is down, or a peer of the other org the endorsement policy
  needs, is named; the devnet hid both (it answered for a stopped chaincode after
  a deadline, and evaluated on the gateway peer alone).
- A chain step that meets the stopped chaincode records an error naming it.
- `saga ledger tx TXID`: validation code, block and the record of the
  transaction's idempotency key; a txid the ledger does not have exits 3.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import outbox
from saga.app.chain import ChainSettings
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from saga.core.definitions import Registry
from saga.core.step_message import StepMessage
from saga.entrypoints.cli.main import app
from saga.examples import order_payment
from tests.support.fabricnet import RealLedgerNet

runner = CliRunner()
LEDGER_DEFINITIONS = "saga.examples.order_payment_ledger"


def _env(net: RealLedgerNet, **more: str) -> dict[str, str]:
    return {
        "SAGA_FABRIC_PROFILE": str(net.profile(1)),
        "SAGA_FABRIC_MSP_DIR": str(net.msp_dir(1)),
        "SAGA_FABRIC_MSP_ID": "",
        "SAGA_FABRIC_PEER": "",
        "SAGA_FABRIC_CHANNEL": net.channel,
        "SAGA_DEFINITIONS": LEDGER_DEFINITIONS,
        "SAGA_LOG_LEVEL": "WARNING",
        **more,
    }


def _saga(env: dict[str, str], *args: str, code: int) -> Any:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, result.output
    return result


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_default_ping_asks_the_sagas_chaincode_and_names_the_part_that_is_down(
    real_sagafacts_net: RealLedgerNet,
) -> None:
    net = real_sagafacts_net.network
    env = _env(real_sagafacts_net)

    healthy = json.loads(_saga(env, "ledger", "ping", "--json", code=0).stdout)
    [checked] = healthy["chaincodes"]
    assert checked["name"] == "sagafacts" and checked["channel"] == net.channel
    # The endorsement reached both orgs the sagafacts policy (majority of two) needs.
    assert checked["endorsed_by"] == ["Org1MSP", "Org2MSP"]
    text = _one_line(_saga(env, "ledger", "ping", code=0).stdout)
    assert "chaincode sagafacts answered" in text and "endorsed by Org1MSP, Org2MSP" in text

    with net.stopped("chaincode", kill=True):
        down = _one_line(_saga(env, "ledger", "ping", code=1).output)
    assert "chaincode sagafacts is not running" in down, down
    assert "connection refused" in down
    net.wait_ready()

    with net.stopped("peer0.org2", kill=True):
        first = _one_line(_saga(env, "ledger", "ping", code=1).output)
        # Once gossip has noticed, the gateway names no peer any more; still the
        # endorsement, not the chaincode or the gateway peer, is what is down.
        time.sleep(3)
        later = _one_line(_saga(env, "ledger", "ping", code=1).output)
    for said in (first, later):
        assert "endorsement of chaincode sagafacts" in said, said
        assert "another organisation's peer" in said, said
        assert "is not running" not in said and "no answer from" not in said
    assert "Org2MSP" in first
    net.wait_ready()
    _saga(env, "ledger", "ping", code=0)

    # Only the gateway peer, when asked for that alone.
    only = json.loads(_saga(env, "ledger", "ping", "--gateway-only", "--json", code=0).stdout)
    assert only["chaincodes"] == []


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    e = create_engine(Settings(database_url=pg_url))
    yield e
    e.dispose()


def _drive_one(orch: Orchestrator, engine: Engine, saga_id: str) -> str:
    """Handle the saga's next outbox message, as the relay and a worker would."""
    with engine.begin() as c:
        row = c.execute(
            select(outbox.c.id, outbox.c.body)
            .where(outbox.c.saga_id == saga_id, outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(1)
        ).one()
        c.execute(
            update(outbox).where(outbox.c.id == row.id).values(published_at=datetime.now(UTC))
        )
    message = StepMessage.from_body(row.body)
    orch.handle(message)
    return message.step


def test_a_chain_step_meeting_a_stopped_chaincode_records_an_error_naming_it(
    real_sagafacts_net: RealLedgerNet, engine: Engine
) -> None:
    net = real_sagafacts_net.network
    client = real_sagafacts_net.gateway(1)
    orch = Orchestrator(
        order_payment.register_with_ledger(Registry()),
        SqlUnitOfWorkFactory(engine),
        transient_errors=TRANSIENT_ERRORS,
        ledger=lambda: client,
        chain_settings=ChainSettings(channel=net.channel, recheck_delay=0),
    )
    payment = {
        "order_id": f"h-{uuid.uuid4().hex[:6]}",
        "customer_id": "c-1",
        "amount_cents": 500,
        "currency": "EUR",
    }
    saga_id = orch.enqueue(order_payment.NAME, payment).saga_id
    with net.stopped("chaincode", kill=True):
        while _drive_one(orch, engine, saga_id) != "record_on_ledger":
            pass
    record, _ = orch.get(saga_id)
    step = record.state.steps[record.state.current]
    assert step.name == "record_on_ledger" and step.waiting_since is not None
    error = step.last_error or ""
    assert "chaincode sagafacts is not running" in error, error
    assert "connection refused" in error
    net.wait_ready()


def test_ledger_tx_prints_code_block_and_the_record_of_its_key(
    real_sagafacts_net: RealLedgerNet,
) -> None:
    env = _env(real_sagafacts_net)
    client = real_sagafacts_net.gateway(1)
    channel = real_sagafacts_net.channel
    key = f"{uuid.uuid4()}/record_on_ledger/do"
    prepared = client.prepare(channel, "sagafacts", "RecordPayment", [key, "o-9", "700", "EUR"])
    client.submit(prepared)
    committed = client.commit_status(channel, prepared.txid)

    found = json.loads(_saga(env, "ledger", "tx", prepared.txid, "--json", code=0).stdout)
    assert found["txid"] == prepared.txid and found["channel"] == channel
    assert found["validation_code"] == 0 and found["validation_code_name"] == "VALID"
    assert found["block"] == committed.block_number
    assert found["chaincode"] == "sagafacts" and found["keys"] == [key]
    [record] = found["records"]
    assert record["key"] == key and record["record"]["txid"] == prepared.txid
    assert record["written_by_this_transaction"] is True

    text = _one_line(_saga(env, "ledger", "tx", prepared.txid, code=0).stdout)
    assert f"transaction {prepared.txid} is VALID in block {committed.block_number}" in text
    assert f"record {key}: written by this transaction" in text

    missing = "ab" * 32
    absent = _one_line(_saga(env, "ledger", "tx", missing, code=3).output)
    assert f"transaction {missing} is not on channel {channel}" in absent
    not_a_txid = _saga(env, "ledger", "tx", "nope", code=2).output
    assert "64 hexadecimal digits" in not_a_txid


def test_ping_with_orderers_asks_each_one_and_names_those_down(
    real_sagafacts_net: RealLedgerNet,
) -> None:
    net = real_sagafacts_net.network
    env = _env(real_sagafacts_net)
    height = json.loads(_saga(env, "ledger", "ping", "--json", code=0).stdout)["height"]

    found = json.loads(_saga(env, "ledger", "ping", "--orderers", "--json", code=0).stdout)
    assert len(found["orderers"]) == len(net.orderers) == 3
    for answer in found["orderers"]:
        assert answer["msp_id"] == "OrdererMSP" and answer["error"] == ""
        assert answer["newest_block"] >= height - 1

    first, second, _ = net.orderers
    with net.stopped(first, kill=True):
        # Two of three answer: the service can order; the one that does not is named.
        one_down = _one_line(_saga(env, "ledger", "ping", "--orderers", code=0).output)
        assert "2 of 3 orderers answered" in one_down and "did not answer" in one_down
        with net.stopped(second, kill=True):
            most_down = _one_line(_saga(env, "ledger", "ping", "--orderers", code=1).output)
    assert "ordering service cannot order: 1 of 3 orderers answered" in most_down, most_down
    assert "connection refused" in most_down.lower()
    net.wait_ready()
