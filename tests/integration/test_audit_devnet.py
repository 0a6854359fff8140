"""`saga audit` against real PostgreSQL and a real devnet running sagafacts.

One scenario on one ledger: the audit is clean after a good run, then each kind
of discrepancy is created in turn and must show up, alone, in its own count.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient
from saga.adapters.fabric.crypto import compute_txid, new_nonce
from saga.adapters.fabric.ledger_scan import ledger_counts, scan_ledger
from saga.adapters.fabric.proposal import build_proposal
from saga.adapters.sql import SqlUnitOfWorkFactory
from saga.app.audit import AuditReport, audit
from saga.core.chain import AttemptState
from saga.core.state import StepStatus
from saga.ports.ledger import VALID
from saga.ports.store import LedgerAttemptRecord
from tests.support.devnet import Devnet
from tests.support.watcher import (
    REPO,
    ChainSaga,
    add_waiting_saga,
    gateway,
    msp_dir,
    new_saga_id,
    prepared_sagas,
    sagafacts_net,
    set_saga,
)


@pytest.fixture(scope="module")
def net(module_devnet_factory: Callable[..., Devnet], chaincode_address: str) -> Devnet:
    return sagafacts_net(module_devnet_factory, chaincode_address, batch_timeout=0.3)


def _commit(uow: SqlUnitOfWorkFactory, client: GatewayClient, saga: ChainSaga) -> int:
    result = client.commit_status(saga.channel, saga.txid)
    with uow() as unit:
        unit.ledger_attempts.mark_committed(saga.txid, result.code, result.block_number)
        unit.commit()
    return result.code


def _completed(
    uow: SqlUnitOfWorkFactory, client: GatewayClient, channel: str, n: int
) -> list[ChainSaga]:
    sagas = prepared_sagas(uow, client, channel, n)
    for saga in sagas:
        assert _commit(uow, client, saga) == VALID
        set_saga(uow, saga.saga_id, status=StepStatus.DONE)
    return sagas


def _audit(
    uow: SqlUnitOfWorkFactory, client: GatewayClient, channel: str, **kw: Any
) -> AuditReport:
    return audit(uow, None, scan_ledger(client, channel), **kw)


def _only(report: AuditReport, **expected: int | None) -> None:
    wanted = {k: 0 for k in report.counts()} | expected
    assert report.counts() == wanted, report.as_dict()


def _cli(net: Devnet, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SAGA_DATABASE_URL": db_url,
        "SAGA_FABRIC_PROFILE": str(net.profile(1)),
        "SAGA_FABRIC_MSP_DIR": str(msp_dir(net)),
        "SAGA_FABRIC_CHANNEL": net.config["channel"],
    }
    return subprocess.run(
        [sys.executable, "-m", "saga", "audit", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _devkv_record(client: GatewayClient, channel: str, key: str) -> str:
    """A VALID transaction writing a record for `key` that names itself, through the
    devnet's plain key-value chaincode: the duplicate sagafacts can never make."""
    nonce = new_nonce()
    txid = compute_txid(nonce, client.identity.creator)
    value = json.dumps({"key": key, "txid": txid}, sort_keys=True)
    proposal = build_proposal(
        client.identity, channel, "devkv", "put", [f"record:{key}", value], nonce=nonce
    )
    assert proposal.txid == txid
    prepared = client.endorse(proposal)
    client.submit(prepared)
    assert client.commit_status(channel, txid).code == VALID
    return txid


def test_audit_is_clean_after_a_good_run_and_reports_each_discrepancy(
    net: Devnet,
    engine: Engine,
    uow_factory: SqlUnitOfWorkFactory,
    pg_url: str,
) -> None:
    channel = net.config["channel"]
    uow = uow_factory
    client = gateway(net)
    try:
        good = _completed(uow, client, channel, 5)

        report = _audit(uow, client, channel)
        _only(report)
        assert report.clean and report.sagas == 5 and report.chain_steps == 5
        assert report.ledger_transactions == 5
        counts = ledger_counts(client, channel)
        assert (counts.valid, counts.keys, counts.duplicate_keys) == (5, 5, 0)
        ok = _cli(net, pg_url, "--json")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["clean"] is True

        # 1. A VALID transaction the database never recorded, made with the
        #    Gateway client directly.
        foreign = f"foreign-{secrets.token_hex(4)}/pay/do"
        client.submit_transaction(
            channel, "sagafacts", "RecordPayment", [foreign, "o-1", "5", "EUR"]
        )
        report = _audit(uow, client, channel)
        _only(report, unknown_keys=1)
        [item] = report.found["unknown_keys"] or []
        assert item.key == foreign

        # 2. A step the database calls done with a txid the ledger does not have.
        ghost = new_saga_id()
        add_waiting_saga(uow, ghost)
        with uow() as unit:
            unit.ledger_attempts.add(
                LedgerAttemptRecord(
                    saga_id=ghost,
                    step="record",
                    purpose="do",
                    txid=secrets.token_hex(32),
                    channel=channel,
                    envelope=good[0].envelope,  # any envelope; the txid is what counts
                    state=AttemptState.COMMITTED,
                    code=VALID,
                    block=1,
                )
            )
            unit.commit()
        set_saga(uow, ghost, status=StepStatus.DONE)
        report = _audit(uow, client, channel)
        _only(report, unknown_keys=1, done_without_valid=1)
        [item] = report.found["done_without_valid"] or []
        assert (item.saga_id, item.step, item.purpose) == (ghost, "record", "do")

        # 3. A saga that gave up on a step the ledger has VALID.
        [lost] = prepared_sagas(uow, client, channel, 1)
        assert _commit(uow, client, lost) == VALID
        set_saga(uow, lost.saga_id, status=StepStatus.FAILED)
        report = _audit(uow, client, channel)
        _only(report, unknown_keys=1, done_without_valid=1, valid_not_done=1)
        [item] = report.found["valid_not_done"] or []
        assert item.saga_id == lost.saga_id and item.txids == (lost.txid,)

        # 4. A saga still waiting (its envelope stored, never submitted): not
        #    terminal, its transaction pending; its key is known from the stored envelope.
        [waiting] = prepared_sagas(uow, client, channel, 1, submit=False)
        report = _audit(uow, client, channel)
        _only(
            report,
            unknown_keys=1,
            done_without_valid=1,
            valid_not_done=1,
            not_terminal=1,
            pending_transactions=1,
        )
        [item] = report.found["not_terminal"] or []
        assert item.saga_id == waiting.saga_id
        [item] = report.found["pending_transactions"] or []
        assert (item.saga_id, item.step, item.txids) == (waiting.saga_id, "record", (waiting.txid,))
        assert "prepared" in item.detail and "no submit recorded" in item.detail
        assert "not on the ledger" in item.detail

        # 4b. A saga that gave up in doubt (failed, terminal) while its transaction is
        #     neither committed nor known to the ledger: the audit of that saga alone
        #     says so instead of counting zeros.
        [doubt] = prepared_sagas(uow, client, channel, 1, submit=False)
        set_saga(uow, doubt.saga_id, status=StepStatus.FAILED)
        alone = _audit(uow, client, channel, saga_id=doubt.saga_id)
        _only(alone, unknown_keys=None, pending_transactions=1)
        assert not alone.clean
        pending = _cli(net, pg_url, "--saga", doubt.saga_id)
        assert pending.returncode == 1, pending.stdout
        assert "pending transactions" in pending.stdout and doubt.txid[:12] in pending.stdout

        # 5. Two VALID transactions creating one key (only possible outside
        #    sagafacts; scanned in the devkv namespace).
        dup = f"dup-{secrets.token_hex(4)}"
        first, second = _devkv_record(client, channel, dup), _devkv_record(client, channel, dup)
        kv_scan = scan_ledger(client, channel, "devkv")
        assert {k: [t.txid for t in v] for k, v in kv_scan.duplicates().items()} == {
            dup: [first, second]
        }
        assert ledger_counts(client, channel, "devkv").duplicate_transactions == 1
        kv_report = audit(uow, None, kv_scan)
        [item] = kv_report.found["duplicate_keys"] or []
        assert item.key == dup and item.txids == (first, second)
        assert kv_report.counts()["duplicate_keys"] == 1

        # The command: counts, exit 1; one clean saga alone: exit 0.
        bad = _cli(net, pg_url, "--json")
        assert bad.returncode == 1, bad.stderr
        assert json.loads(bad.stdout)["counts"] == {
            "done_without_valid": 1,
            "valid_not_done": 1,
            "unknown_keys": 1,
            "duplicate_keys": 0,
            "not_terminal": 1,
            "pending_transactions": 2,
        }
        table = _cli(net, pg_url)
        assert table.returncode == 1 and "unknown keys" in table.stdout
        one = _cli(net, pg_url, "--saga", good[0].saga_id, "--json")
        assert one.returncode == 0, one.stdout
        assert json.loads(one.stdout)["counts"]["unknown_keys"] is None
    finally:
        client.close()
