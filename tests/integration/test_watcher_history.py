"""What the commit watcher writes on a saga's history, on a real PostgreSQL store: a
commit that wakes the waiting step is the normal path, not a re-drive; a re-drive
after a commit deadline says so."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine
from saga.app.watcher import CommitWatcher
from saga.core.chain import AttemptState
from saga.core.state import SagaState
from saga.ports.ledger import VALID, CommitResult
from saga.ports.store import LedgerAttemptRecord, SagaRecord


@pytest.fixture
def uow(pg_url: str) -> Iterator[SqlUnitOfWorkFactory]:
    engine: Engine = create_engine(pg_url)
    with engine.begin() as c:
        c.execute(text("TRUNCATE ledger_attempts RESTART IDENTITY"))
    yield SqlUnitOfWorkFactory(engine)
    engine.dispose()


def _waiting_saga(uow: SqlUnitOfWorkFactory) -> LedgerAttemptRecord:
    saga_id = str(uuid.uuid4())
    state = SagaState.new(saga_id, "ledger-test", 1, ["record"]).with_step(0, attempts=1)
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
    with uow() as u:
        u.sagas.add(SagaRecord(state=state, input={}))
        u.ledger_attempts.add(attempt)
        u.commit()
    return attempt


def _history(uow: SqlUnitOfWorkFactory, saga_id: str) -> list[tuple[str, dict[str, object]]]:
    with uow() as u:
        return [(h.kind, h.detail) for h in u.history.for_saga(saga_id) if h.actor == "watcher"]


def test_a_commit_that_wakes_its_step_is_not_called_a_redrive(
    uow: SqlUnitOfWorkFactory,
) -> None:
    watcher = CommitWatcher(uow, connect=lambda: None)  # type: ignore[arg-type, return-value]
    attempt = _waiting_saga(uow)
    settled = watcher._record_commit_safely(attempt, CommitResult(attempt.txid, VALID, "VALID", 7))
    assert settled.first
    ((kind, detail),) = _history(uow, attempt.saga_id)
    assert kind == "ledger committed"
    assert detail["code"] == "VALID" and detail["block"] == 7
    assert "redriven" not in detail, detail
    assert detail["step_message"] == "sent"

    # A re-drive after the commit deadline is one, and says so.
    other = _waiting_saga(uow)
    assert watcher._record_deadline(other)
    ((kind, detail),) = _history(uow, other.saga_id)
    assert kind == "ledger commit deadline" and detail["redriven"] is True
