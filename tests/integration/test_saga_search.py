"""The operators' saga search (saga.adapters.sql.saga_search), on PostgreSQL and on SQLite:
filters (ids, status, name, idempotency key, input fields), totals, keyset pages, and
one statement for the summaries of many sagas."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from saga.adapters.sql import SqlUnitOfWorkFactory
from saga.adapters.sql.saga_search import (
    BadFilter,
    Cursor,
    InputField,
    SagaFilter,
    matching_ids,
    search,
    summaries,
)
from saga.core.state import SagaState, SagaStatus, StepState, StepStatus
from saga.ports.store import SagaRecord

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _add(
    engine: Engine,
    *,
    minutes: int,
    status: SagaStatus = SagaStatus.RUNNING,
    name: str = "order-payment",
    key: str | None = None,
    current: int = 0,
    **payload: Any,
) -> str:
    saga_id = str(uuid.uuid4())
    steps = (
        StepState("reserve_funds", StepStatus.DONE if current else StepStatus.PENDING, 1),
        StepState("record_payment", attempts=1 if current else 0),
    )
    record = SagaRecord(
        state=SagaState(saga_id, name, 1, status, current, steps),
        input={"order_id": f"o-{minutes}", "customer_id": "c-1", "amount_cents": 100, **payload},
        idempotency_key=key,
        payload_hash="h" * 64 if key else None,
        created_at=T0,
        updated_at=T0 + timedelta(minutes=minutes),
    )
    with SqlUnitOfWorkFactory(engine)() as uow:
        uow.sagas.add(record)
        uow.commit()
    return saga_id


def _ids(engine: Engine, where: SagaFilter, limit: int = 100) -> list[str]:
    with engine.connect() as c:
        return [s.saga_id for s in search(c, where, limit=limit).summaries]


def test_each_filter_selects_what_it_names(store_engine: Engine) -> None:
    e = store_engine
    a = _add(e, minutes=1, customer_id="c-17", amount_cents=1250)
    b = _add(e, minutes=2, status=SagaStatus.FAILED, key="shop-order-9", order_id="1250")
    c = _add(e, minutes=3, name="refund", address={"city": "Lyon"}, flag=True)
    d = _add(e, minutes=4, status=SagaStatus.COMPLETED, customer_id="c-17")

    assert _ids(e, SagaFilter()) == [d, c, b, a]  # newest progress first
    assert _ids(e, SagaFilter(ids=(a, c, "no-such-id"))) == [c, a]
    assert _ids(e, SagaFilter(statuses=("failed", "completed"))) == [d, b]
    assert _ids(e, SagaFilter(name="refund")) == [c]
    assert _ids(e, SagaFilter(idempotency_key="shop-order-9")) == [b]
    assert _ids(e, SagaFilter(older_than=T0 + timedelta(minutes=2, seconds=30))) == [a, b]

    def by_input(*fields: str, **more: Any) -> list[str]:
        return _ids(e, SagaFilter(inputs=tuple(InputField.parse(f) for f in fields), **more))

    assert by_input("customer_id=c-17") == [d, a]
    assert by_input("customer_id=c-17", statuses=("running",)) == [a]
    # A number typed matches the JSON number and the string that spells it.
    assert by_input("amount_cents=1250") == [a]
    assert by_input("order_id=1250") == [b]
    assert by_input("address.city=Lyon") == [c]
    assert by_input("flag=true") == [c]
    assert by_input("customer_id=c-1") == [c, b]
    assert by_input("customer_id=nobody") == []
    for bad in ("customer_id", "=x", "a..b=1", "a b=1"):
        with pytest.raises(BadFilter, match="FIELD=VALUE"):
            InputField.parse(bad)


def test_pages_follow_each_other_with_totals_and_no_overlap(store_engine: Engine) -> None:
    e = store_engine
    ids = [_add(e, minutes=m) for m in range(7)]
    failed = _add(e, minutes=7, status=SagaStatus.FAILED)
    newest_first = [failed, *reversed(ids)]

    seen: list[str] = []
    after: Cursor | None = None
    pages = 0
    with e.connect() as c:
        while True:
            page = search(c, SagaFilter(), limit=3, after=after)
            pages += 1
            assert page.total == 8
            assert page.by_status == {"running": 7, "failed": 1}
            seen += [s.saga_id for s in page.summaries]
            if page.next is None:
                break
            # The cursor survives being printed and typed back.
            after = Cursor.parse(page.next.token())
        assert seen == newest_first and pages == 3

        # Oldest first with --older-than, paged the same way.
        cutoff = SagaFilter(older_than=T0 + timedelta(minutes=5))
        first = search(c, cutoff, limit=2)
        assert [s.saga_id for s in first.summaries] == ids[:2] and first.total == 5
        assert first.next is not None
        second = search(c, cutoff, limit=10, after=first.next)
        assert [s.saga_id for s in second.summaries] == ids[2:5] and second.next is None

    with pytest.raises(BadFilter, match="not a cursor"):
        Cursor.parse("yesterday")


def test_summaries_of_many_sagas_are_one_statement(store_engine: Engine) -> None:
    e = store_engine
    ids = [_add(e, minutes=m, current=1) for m in range(40)]
    statements: list[str] = []

    def count(*args: Any) -> None:
        # Not SQLite's BEGIN IMMEDIATE (saga.adapters.sql.engine): a query is what is counted.
        if str(args[2]).lstrip().upper().startswith("SELECT"):
            statements.append(str(args[2]))

    with e.connect() as c:
        event.listen(e, "before_cursor_execute", count)
        try:
            found = summaries(c, [*ids, "gone"])
        finally:
            event.remove(e, "before_cursor_execute", count)
    assert len(statements) == 1, statements
    assert set(found) == set(ids)
    one = found[ids[0]]
    assert (one.step, one.step_status, one.attempts) == ("record_payment", StepStatus.PENDING, 1)
    assert one.updated_at == T0 and one.status is SagaStatus.RUNNING


def test_a_filter_for_a_wait_is_bounded(store_engine: Engine) -> None:
    e = store_engine
    ids = [_add(e, minutes=m, status=SagaStatus.FAILED) for m in range(3)]
    _add(e, minutes=9)
    with e.connect() as c:
        assert matching_ids(c, SagaFilter(statuses=("failed",)), at_most=3) == ids
        with pytest.raises(BadFilter, match="more than 2 sagas"):
            matching_ids(c, SagaFilter(statuses=("failed",)), at_most=2)
