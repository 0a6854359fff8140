"""The sweeper and chain steps, on real PostgreSQL, a devnet and the sagafacts chaincode.

A worker dies right after committing PREPARED (before Submit), and its message
is gone with it: the sweeper re-drives the step, and the executor's verify path
resubmits the stored envelope. Exactly one VALID transaction results.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient
from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import ledger_attempts, outbox, sagas
from saga.app.chain import ChainSettings
from saga.app.orchestrator import Orchestrator
from saga.app.sweeper import ATTEMPT_GIVEN_UP, ATTEMPT_SETTLED, NOT_VALIDATED, SweepConfig, Sweeper
from saga.core.definitions import Registry
from saga.core.state import SagaStatus
from saga.examples import order_payment
from tests.support.chain_ledger import one_valid
from tests.support.ledger import LedgerNet
from tests.support.outbox import drive_outbox

STEP = "record_on_ledger"


class WorkerGone(BaseException):
    """The worker process died (not an error any code handles)."""


class DiesBeforeSubmit:
    """The real client, except that while armed the process 'dies' at Submit."""

    def __init__(self, client: GatewayClient) -> None:
        self._client = client
        self.armed = True

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            raise WorkerGone
        return self._client.submit(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    with engine.begin() as c:
        c.execute(delete(ledger_attempts))
    yield engine
    engine.dispose()


@pytest.fixture
def client(sagafacts_net: LedgerNet) -> Iterator[GatewayClient]:
    sagafacts_net.devnet.reset_faults()
    yield sagafacts_net.gateway()


def payment(order: str) -> dict[str, Any]:
    return {"order_id": order, "customer_id": "c-1", "amount_cents": 700, "currency": "EUR"}


def _orchestrator(engine: Engine, ledger: Any, channel: str) -> Orchestrator:
    """The example order payment on this store and ledger, re-checks after 0.3 s."""
    return Orchestrator(
        order_payment.register_with_ledger(Registry()),
        SqlUnitOfWorkFactory(engine),
        transient_errors=TRANSIENT_ERRORS,
        ledger=lambda: ledger,
        chain_settings=ChainSettings(channel=channel, recheck_delay=0.3),
    )


def test_prepared_chain_step_with_its_worker_gone_ends_with_one_valid_transaction(
    engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    ledger = DiesBeforeSubmit(client)
    orch = _orchestrator(engine, ledger, sagafacts_net.channel)
    saga_id = orch.enqueue(order_payment.NAME, payment("sweep-1")).saga_id
    with pytest.raises(WorkerGone):
        drive_outbox(orch, engine, timeout=90.0)
    with engine.connect() as c:
        rows = list(c.execute(select(ledger_attempts.c.txid, ledger_attempts.c.state)))
    assert [r.state for r in rows] == ["prepared"]
    # The re-check message went out with the PREPARED row; lost (a purged queue, a
    # broker restored from an old disk), only the sweeper is left to drive the step.
    with engine.begin() as c:
        lost = c.execute(
            delete(outbox).where(outbox.c.saga_id == saga_id, outbox.c.published_at.is_(None))
        )
    assert lost.rowcount == 1

    with engine.begin() as c:  # an hour without progress
        c.execute(
            update(sagas)
            .where(sagas.c.id == saga_id)
            .values(updated_at=datetime.now(UTC) - timedelta(hours=1))
        )
    ledger.armed = False
    sweeper = Sweeper(orch.uow_factory, orch.registry, SweepConfig(grace=60), ledger=lambda: client)
    assert sweeper.sweep().redriven == [saga_id]
    drive_outbox(orch, engine, timeout=90.0)

    assert orch.get(saga_id)[0].state.status is SagaStatus.COMPLETED
    txid = one_valid(engine, client, sagafacts_net.channel, saga_id, "do")
    assert txid == rows[0].txid  # the stored envelope itself, resubmitted
    with engine.connect() as c:
        txids = [r.txid for r in c.execute(select(ledger_attempts.c.txid))]
    assert txids == [txid]


def test_prepared_chain_step_with_its_worker_gone_is_driven_again_by_its_recheck(
    engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    """Without the sweeper: the re-check message written with the PREPARED row drives
    the step again, and the stored envelope itself is what commits."""
    ledger = DiesBeforeSubmit(client)
    orch = _orchestrator(engine, ledger, sagafacts_net.channel)
    saga_id = orch.enqueue(order_payment.NAME, payment("recheck-1")).saga_id
    with pytest.raises(WorkerGone):
        drive_outbox(orch, engine, timeout=90.0)
    with engine.connect() as c:
        (prepared,) = list(c.execute(select(ledger_attempts.c.txid, ledger_attempts.c.state)))
        waiting = c.execute(
            select(func.count()).where(outbox.c.saga_id == saga_id, outbox.c.published_at.is_(None))
        ).scalar_one()
    assert prepared.state == "prepared" and waiting == 1
    ledger.armed = False
    drive_outbox(orch, engine, timeout=90.0)
    assert orch.get(saga_id)[0].state.status is SagaStatus.COMPLETED
    assert one_valid(engine, client, sagafacts_net.channel, saga_id, "do") == prepared.txid


def test_unsettled_attempts_of_terminal_sagas_are_settled_or_given_up(
    engine: Engine, client: GatewayClient, sagafacts_net: LedgerNet
) -> None:
    orch = _orchestrator(engine, client, sagafacts_net.channel)
    saga_id = orch.enqueue(order_payment.NAME, payment("sweep-2")).saga_id
    drive_outbox(orch, engine, timeout=90.0)
    assert orch.get(saga_id)[0].state.status is SagaStatus.COMPLETED
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    with engine.begin() as c:
        (valid,) = c.execute(select(ledger_attempts.c.txid)).one()
        # The database lost the commit (restored from a backup taken before it) ...
        c.execute(
            update(ledger_attempts).values(
                state="submitted", code=None, block=None, created_at=long_ago
            )
        )
        # ... and holds an envelope that never reached the orderer.
        c.execute(
            insert(ledger_attempts).values(
                saga_id=saga_id,
                step=STEP,
                purpose="do",
                txid="ab" * 32,
                channel=sagafacts_net.channel,
                envelope=b"never submitted",
                state="prepared",
                created_at=long_ago,
            )
        )
    sweeper = Sweeper(
        orch.uow_factory,
        orch.registry,
        SweepConfig(grace=60, abandon_after=3600, status_timeout=1.0),
        ledger=lambda: client,
    )
    report = sweeper.sweep()
    assert report.attempts_settled == [valid]
    assert report.attempts_given_up == ["ab" * 32]
    with engine.connect() as c:
        codes = dict(c.execute(select(ledger_attempts.c.txid, ledger_attempts.c.code)).all())
        unsettled = c.execute(
            select(ledger_attempts.c.txid).where(ledger_attempts.c.state != "committed")
        ).all()
    assert codes == {valid: 0, "ab" * 32: NOT_VALIDATED}
    assert unsettled == []  # nothing left for the watcher to follow forever
    kinds = [h.kind for h in orch.get(saga_id)[1]]
    assert kinds.count(ATTEMPT_SETTLED) == 1 and kinds.count(ATTEMPT_GIVEN_UP) == 1
    assert sweeper.sweep().attempts_settled == []
