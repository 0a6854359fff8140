"""The search's filters the operator console adds (current step, error text, waiting
for the ledger) and its capped count, on PostgreSQL and on SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from saga.adapters.sql import SqlUnitOfWorkFactory
from saga.adapters.sql.saga_search import SagaFilter, count_matching, search
from saga.core.state import SagaState, SagaStatus, StepState, StepStatus
from saga.ports.store import SagaRecord

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _add(
    engine: Engine,
    minutes: int,
    *,
    current: int = 0,
    status: SagaStatus = SagaStatus.RUNNING,
    reason: str | None = None,
    last_error: str | None = None,
    waiting: bool = False,
) -> str:
    saga_id = str(uuid.uuid4())
    steps = [
        StepState("pack", StepStatus.DONE, 1),
        StepState("record_on_ledger"),
        StepState("ship"),
    ]
    steps[current] = StepState(
        steps[current].name,
        StepStatus.FAILED if last_error else StepStatus.PENDING,
        1,
        last_error=last_error,
        waiting_since=T0 if waiting else None,
    )
    record = SagaRecord(
        state=SagaState(saga_id, "shipment", 1, status, current, tuple(steps), reason=reason),
        input={"order_id": f"o-{minutes}"},
        created_at=T0,
        updated_at=T0 + timedelta(minutes=minutes),
    )
    with SqlUnitOfWorkFactory(engine)() as uow:
        uow.sagas.add(record)
        uow.commit()
    return saga_id


def _ids(engine: Engine, where: SagaFilter) -> list[str]:
    with engine.connect() as c:
        page = search(c, where, limit=100)
        assert page.total == len(page.summaries)  # the totals read the step's row too
        return [s.saga_id for s in page.summaries]


def test_step_error_text_and_ledger_wait_filters(store_engine: Engine) -> None:
    e = store_engine
    packing = _add(e, 1)
    on_ledger = _add(e, 2, current=1, waiting=True)
    failed = _add(
        e,
        3,
        current=2,
        status=SagaStatus.FAILED,
        reason="step 'ship' failed for good",
        last_error="CarrierDown: 503 from the carrier's API",
    )
    # A saga that ended while its step waited: the wait no longer counts.
    ended = _add(e, 4, current=1, status=SagaStatus.COMPENSATED, waiting=True)

    assert _ids(e, SagaFilter(step="record_on_ledger")) == [ended, on_ledger]
    assert _ids(e, SagaFilter(step="pack")) == [packing]
    assert _ids(e, SagaFilter(error="carrierdown")) == [failed]  # the step's error, any case
    assert _ids(e, SagaFilter(error="FOR GOOD")) == [failed]  # the saga's reason
    assert _ids(e, SagaFilter(error="50%")) == []  # % and _ are text, not wildcards
    assert _ids(e, SagaFilter(error="503 from")) == [failed]
    assert _ids(e, SagaFilter(waiting_for_ledger=True)) == [on_ledger]
    assert _ids(e, SagaFilter(statuses=("failed",), step="ship", error="503")) == [failed]


def test_count_matching_stops_past_its_cap(store_engine: Engine) -> None:
    for minutes in range(5):
        _add(store_engine, minutes)
    with store_engine.connect() as c:
        assert count_matching(c, SagaFilter(), at_most=10) == 5
        assert count_matching(c, SagaFilter(), at_most=3) == 4  # "more than 3"
        assert count_matching(c, SagaFilter(step="ship"), at_most=10) == 0
