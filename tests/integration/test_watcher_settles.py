"""The commit watcher records a VALID commit's step success itself, on a real
PostgreSQL store: no step message, no second executor task, one transaction with
the commit. Anything else still goes to the step as its message."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.sql import SqlUnitOfWorkFactory
from saga.adapters.sql.tables import inbox, outbox
from saga.app.orchestrator import Orchestrator
from saga.app.watcher import CommitWatcher, SettleValid, commit_message_id
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
from saga.core.state import SagaStatus, StepStatus
from saga.core.step_message import StepMessage
from saga.ports.ledger import MVCC_READ_CONFLICT, VALID, CommitResult
from saga.ports.store import LedgerAttemptRecord, SagaRecord, UnitOfWork


def _args(ctx: StepContext) -> list[str]:
    return ["o-1", "100", "EUR"]


def _after(ctx: StepContext) -> dict[str, str]:
    return {"noted": "yes"}


class Order(BaseModel):
    order_id: str = "o-1"


def _registry() -> Registry:
    registry = Registry()
    registry.add(
        SagaDefinition(
            name="watched",
            version=1,
            input_model=Order,
            steps=(
                Step(
                    "record",
                    kind=StepKind.CHAIN,
                    chain=ChainCall("sagafacts", "RecordPayment", _args),
                ),
                Step("notify", action=_after),
            ),
        )
    )
    return registry


def _watcher(uow: SqlUnitOfWorkFactory, settle: SettleValid) -> CommitWatcher:
    """A watcher whose commits are recorded by hand (no gateway client is opened)."""
    return CommitWatcher(uow, connect=lambda: None, settle_valid=settle)  # type: ignore[arg-type, return-value]


def _waiting_saga(orch: Orchestrator, uow: SqlUnitOfWorkFactory) -> LedgerAttemptRecord:
    """A `watched` saga started, its chain step pending on one SUBMITTED attempt."""
    saga_id = orch.enqueue("watched", {"order_id": "o-1"}).saga_id
    with uow() as u:
        attempt = LedgerAttemptRecord(
            saga_id=saga_id,
            step="record",
            purpose="do",
            txid=uuid.uuid4().hex * 2,
            channel="mychannel",
            envelope=b"envelope",
            state=AttemptState.SUBMITTED,
            created_at=datetime.now(UTC),
            submitted_at=datetime.now(UTC),
        )
        u.ledger_attempts.add(attempt)
        u.commit()
    return attempt


def _messages(engine: Engine, saga_id: str) -> list[StepMessage]:
    with engine.connect() as c:
        bodies = c.execute(select(outbox.c.body).where(outbox.c.saga_id == saga_id)).scalars()
        return [StepMessage.from_body(b) for b in bodies]


def _record(uow: SqlUnitOfWorkFactory, saga_id: str) -> SagaRecord:
    with uow() as u:
        record = u.sagas.get(saga_id)
        assert record is not None
        return record


def _history(uow: SqlUnitOfWorkFactory, saga_id: str) -> list[str]:
    with uow() as u:
        return [h.kind for h in u.history.for_saga(saga_id)]


def test_a_valid_commit_records_the_step_success_with_the_commit(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory
) -> None:
    orch = Orchestrator(_registry(), uow_factory)
    watcher = _watcher(uow_factory, orch.settle_valid_commit)
    attempt = _waiting_saga(orch, uow_factory)
    before = [m.step for m in _messages(engine, attempt.saga_id)]

    settled = watcher._record_commit_safely(attempt, CommitResult(attempt.txid, VALID, "VALID", 9))

    assert settled.first and settled.step_done and not settled.redriven
    record = _record(uow_factory, attempt.saga_id)
    assert record.state.steps[0].status is StepStatus.DONE
    assert record.data["record"] == {
        "txid": attempt.txid,
        "key": chain_key(attempt.saga_id, "record", "do"),
    }
    # No message for the chain step; the next (local) step's message instead.
    after = _messages(engine, attempt.saga_id)
    assert [m.step for m in after] == [*before, "notify"]
    assert commit_message_id(attempt.txid) not in {m.message_id for m in after}
    history = _history(uow_factory, attempt.saga_id)
    assert history.index("ledger committed") < len(history) - 1
    with engine.connect() as c:
        recorded = c.execute(
            select(func.count()).where(inbox.c.message_id == commit_message_id(attempt.txid))
        ).scalar_one()
    assert recorded == 1
    # A second answer for the same txid changes nothing.
    again = watcher._record_commit_safely(attempt, CommitResult(attempt.txid, VALID, "VALID", 9))
    assert not again.first
    assert _record(uow_factory, attempt.saga_id).state == record.state
    assert len(_messages(engine, attempt.saga_id)) == len(after)


def test_an_invalid_commit_still_sends_the_step_its_message(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory
) -> None:
    orch = Orchestrator(_registry(), uow_factory)
    watcher = _watcher(uow_factory, orch.settle_valid_commit)
    attempt = _waiting_saga(orch, uow_factory)
    settled = watcher._record_commit_safely(
        attempt, CommitResult(attempt.txid, MVCC_READ_CONFLICT, "MVCC_READ_CONFLICT", 9)
    )
    assert settled.first and settled.redriven and not settled.step_done
    assert _record(uow_factory, attempt.saga_id).state.steps[0].status is not StepStatus.DONE
    ids = {m.message_id for m in _messages(engine, attempt.saga_id)}
    assert commit_message_id(attempt.txid) in ids


def test_a_failing_settle_falls_back_to_the_message_and_loses_nothing(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory
) -> None:
    orch = Orchestrator(_registry(), uow_factory)

    def broken(u: UnitOfWork, record: SagaRecord, message: StepMessage, txid: str) -> bool:
        orch.settle_valid_commit(u, record, message, txid)
        raise RuntimeError("boom after writing")

    watcher = _watcher(uow_factory, broken)
    attempt = _waiting_saga(orch, uow_factory)
    settled = watcher._record_commit_safely(attempt, CommitResult(attempt.txid, VALID, "VALID", 3))
    assert settled.first and settled.redriven and not settled.step_done
    # Nothing the broken settle wrote survived; the step waits for its message.
    record = _record(uow_factory, attempt.saga_id)
    assert record.state.status is SagaStatus.RUNNING
    assert record.state.steps[0].status is not StepStatus.DONE
    messages = _messages(engine, attempt.saga_id)
    assert commit_message_id(attempt.txid) in {m.message_id for m in messages}
    assert "notify" not in {m.step for m in messages}
    with uow_factory() as u:
        (row,) = u.ledger_attempts.for_step(attempt.saga_id, "record", "do")
    assert row.state is AttemptState.COMMITTED and row.code == VALID
    assert _history(uow_factory, attempt.saga_id).count("ledger committed") == 1


def test_a_saga_these_definitions_do_not_hold_gets_its_message(
    engine: Engine, uow_factory: SqlUnitOfWorkFactory
) -> None:
    orch = Orchestrator(_registry(), uow_factory)
    watcher = _watcher(uow_factory, Orchestrator(Registry(), uow_factory).settle_valid_commit)
    attempt = _waiting_saga(orch, uow_factory)
    settled = watcher._record_commit_safely(attempt, CommitResult(attempt.txid, VALID, "VALID", 4))
    assert settled.first and settled.redriven and not settled.step_done
    assert commit_message_id(attempt.txid) in {
        m.message_id for m in _messages(engine, attempt.saga_id)
    }
