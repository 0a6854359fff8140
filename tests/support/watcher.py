"""The watcher and audit tests' material (`chaincode_address` is a fixture: a plugin
of tests/conftest.py; the store fixtures are tests/support/ledger_store.py's).

A real devnet running the real sagafacts chaincode (chaincode-as-a-service in
a subprocess), the product's GatewayClient, and sagas written straight into a
real PostgreSQL store in the state a chain step leaves them: the step pending
at attempt 1, one ledger attempt PREPARED (envelope stored) and then SUBMITTED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient, SigningIdentity, load_connection_profile
from saga.adapters.fabric.transaction import PreparedTransaction
from saga.adapters.sql import SqlUnitOfWorkFactory
from saga.adapters.sql.tables import ledger_attempts, outbox
from saga.core.chain import AttemptState
from saga.core.state import SagaState, SagaStatus, StepStatus
from saga.ports.store import LedgerAttemptRecord, SagaRecord
from saga_devnet.chaincode_launcher import chaincode_running
from tests.support.devnet import Devnet
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CC_NAME = "sagafacts"
CC_ID = "sagafacts_1.0:devnet"
SAGA_NAME = "ledger-test"


@pytest.fixture(scope="module")
def chaincode_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    address = f"127.0.0.1:{free_port()}"
    with chaincode_running(address, CC_ID, tmp_path_factory.mktemp("cc") / "chaincode.log"):
        yield address


def sagafacts_net(factory: Callable[..., Devnet], address: str, **overrides: Any) -> Devnet:
    return factory(
        chaincodes={
            CC_NAME: {"address": address, "package_id": CC_ID},
            # The devnet's own key-value chaincode: lets a test write a record
            # the sagafacts chaincode never would (a duplicate).
            "devkv": {"builtin": "kv"},
        },
        **overrides,
    )


def msp_dir(net: Devnet, n: int = 1) -> Path:
    return net.org_dir(n) / "users" / f"User1@{net.org(n)['domain']}" / "msp"


def identity_of(net: Devnet, n: int = 1) -> SigningIdentity:
    return SigningIdentity.from_msp_dir(net.org(n)["msp_id"], msp_dir(net, n))


def gateway(net: Devnet, n: int = 1) -> GatewayClient:
    return GatewayClient.connect(
        load_connection_profile(net.profile(n)).endpoint(), identity_of(net, n)
    )


@dataclass(frozen=True)
class ChainSaga:
    saga_id: str
    key: str
    txid: str
    channel: str
    envelope: bytes


def new_saga_id() -> str:
    return str(uuid.uuid4())


def key_for(saga_id: str, step: str = "record", purpose: str = "do") -> str:
    return f"{saga_id}/{step}/{purpose}"


def add_waiting_saga(uow_factory: SqlUnitOfWorkFactory, saga_id: str) -> None:
    """A saga whose only step (a chain step) is pending at attempt 1."""
    state = SagaState.new(saga_id, SAGA_NAME, 1, ["record"])
    state = state.with_step(0, attempts=1)
    with uow_factory() as uow:
        uow.sagas.add(SagaRecord(state=state, input={"amount_cents": 100}))
        uow.commit()


def set_saga(uow_factory: SqlUnitOfWorkFactory, saga_id: str, **step_changes: Any) -> None:
    """Move the saga to a terminal state: completed if its step is done."""
    with uow_factory() as uow:
        record = uow.sagas.get(saga_id, for_update=True)
        assert record is not None
        state = record.state.with_step(0, **step_changes)
        done = state.steps[0].status is StepStatus.DONE
        state = replace(state, status=SagaStatus.COMPLETED if done else SagaStatus.FAILED)
        record.state = state
        uow.sagas.save(record)
        uow.commit()


def prepare(client: GatewayClient, channel: str, key: str) -> PreparedTransaction:
    return client.prepare(
        channel, CC_NAME, "RecordPayment", [key, f"order-{key[:8]}", "100", "EUR"]
    )


def prepared_sagas(
    uow_factory: SqlUnitOfWorkFactory,
    client: GatewayClient,
    channel: str,
    count: int,
    *,
    submit: bool = True,
    threads: int = 4,
) -> list[ChainSaga]:
    """`count` waiting sagas, each with a PREPARED attempt stored, then submitted."""

    def one(_: int) -> ChainSaga:
        saga_id = new_saga_id()
        add_waiting_saga(uow_factory, saga_id)
        key = key_for(saga_id)
        tx = prepare(client, channel, key)
        with uow_factory() as uow:
            uow.ledger_attempts.add(
                LedgerAttemptRecord(
                    saga_id=saga_id,
                    step="record",
                    purpose="do",
                    txid=tx.txid,
                    channel=tx.channel,
                    envelope=tx.envelope,
                    state=AttemptState.PREPARED,
                    worker="test",
                )
            )
            uow.commit()
        made = ChainSaga(saga_id, key, tx.txid, tx.channel, tx.envelope)
        if submit:
            submit_stored(uow_factory, client, made)
        return made

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def submit_stored(
    uow_factory: SqlUnitOfWorkFactory, client: GatewayClient, saga: ChainSaga
) -> None:
    client.submit(saga.envelope)
    with uow_factory() as uow:
        uow.ledger_attempts.mark_submitted(saga.txid)
        uow.commit()


def unsettled_count(engine: Engine) -> int:
    with engine.connect() as c:
        return int(
            c.execute(
                select(func.count())
                .select_from(ledger_attempts)
                .where(ledger_attempts.c.state != "committed")
            ).scalar_one()
        )


def attempts(engine: Engine) -> dict[str, Any]:
    with engine.connect() as c:
        return {r.txid: r for r in c.execute(select(ledger_attempts))}


def outbox_bodies(engine: Engine) -> list[tuple[str, dict[str, Any]]]:
    with engine.connect() as c:
        rows = c.execute(select(outbox.c.message_id, outbox.c.body).order_by(outbox.c.id))
        return [(r.message_id, r.body) for r in rows]


class WatcherProcess:
    """`python -m saga watcher` as a real process of its own."""

    def __init__(self, net: Devnet, db_url: str, log_path: Path, *args: str) -> None:
        env = {
            **os.environ,
            "SAGA_DATABASE_URL": db_url,
            "SAGA_LOG_FORMAT": "json",
            "SAGA_FABRIC_PROFILE": str(net.profile(1)),
            "SAGA_FABRIC_MSP_DIR": str(msp_dir(net)),
        }
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "saga", "watcher", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self, timeout: float = 30) -> dict[str, Any]:
        """SIGTERM; the counters it prints on the way out."""
        self.proc.send_signal(signal.SIGTERM)
        stdout, _ = self.proc.communicate(timeout=timeout)
        self._log.close()
        assert self.proc.returncode == 0, (self.proc.returncode, self.log_tail())
        stats: dict[str, Any] = json.loads(stdout)
        return stats

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_has(self, message: str) -> bool:
        return message in self.log_path.read_text(errors="replace")
