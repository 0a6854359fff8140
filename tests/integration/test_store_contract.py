"""The store's contract: every test runs on PostgreSQL, on SQLite and on the in-memory
store of tests/fakes.py (`backend`).

A case the in-memory store cannot honour (the SQL schema, a step's SQLAlchemy
session, row locks across connections) is marked `sql_only` with the reason, and
runs on PostgreSQL and SQLite only. Tests that need two transactions truly at once
on PostgreSQL say so in their name (SQLite serialises writers, so there the same
situation cannot arise).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Engine

from saga.adapters.sql import (
    ConcurrentDelivery,
    SqlOutboxReader,
    SqlSagaStarts,
    SqlUnitOfWorkFactory,
    StepEndedTransaction,
    create_engine,
    purge,
)
from saga.adapters.sql.engine import PING_AFTER_IDLE_SECONDS
from saga.adapters.sql.tables import metadata as store_metadata
from saga.adapters.sql.tables import outbox
from saga.app.starting import StartInUnitOfWork
from saga.core.chain import AttemptState
from saga.core.state import SagaState, SagaStatus, StepState, StepStatus
from saga.examples.order_payment_tables import metadata as example_metadata
from saga.examples.order_payment_tables import order_payment_events
from saga.ports.store import (
    DuplicateIdempotencyKey,
    HistoryEntry,
    LedgerAttemptRecord,
    OutboxMessage,
    OutboxReader,
    SagaRecord,
    SagaStarts,
    StoreUnavailable,
    UnitOfWorkFactory,
)
from tests.fakes import FakeDatabase, FakeOutboxReader, FakeSession
from tests.support.waiting import wait_for

SQL_BACKENDS = ("postgresql", "sqlite")
BACKENDS = (*SQL_BACKENDS, "memory")


def sql_only(reason: str) -> pytest.MarkDecorator:
    """A case the in-memory store cannot honour, for `reason`: PostgreSQL and SQLite only."""
    return pytest.mark.sql_only(reason=reason)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker("sql_only") is not None
        metafunc.parametrize("backend", SQL_BACKENDS if marked else BACKENDS)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The SQL database of `backend` (this module's own: the in-memory store has none)."""
    assert backend != "memory", "a case that reads the SQL engine is marked sql_only(reason)"
    url: str = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    return url


@pytest.fixture
def memory_db() -> FakeDatabase:
    return FakeDatabase()


def new_id() -> str:
    return str(uuid.uuid4())


def make_record(
    saga_id: str | None = None,
    *,
    key: str | None = None,
    name: str = "order-payment",
    status: SagaStatus = SagaStatus.RUNNING,
    updated_at: datetime | None = None,
) -> SagaRecord:
    saga_id = saga_id or new_id()
    now = datetime.now(UTC)
    return SagaRecord(
        state=SagaState(
            saga_id=saga_id,
            name=name,
            version=1,
            status=status,
            current=0,
            steps=(StepState("reserve_funds"), StepState("record_payment")),
        ),
        input={"order_id": "o-1", "amount_cents": 100},
        idempotency_key=key,
        payload_hash="h" * 64 if key else None,
        created_at=now,
        updated_at=updated_at or now,
    )


def message(saga_id: str, delay: float = 0.0, n: int = 0) -> OutboxMessage:
    return OutboxMessage(new_id(), saga_id, {"n": n, "saga_id": saga_id}, delay=delay)


@pytest.fixture
def uow(backend: str, request: pytest.FixtureRequest) -> UnitOfWorkFactory:
    if backend == "memory":
        db: FakeDatabase = request.getfixturevalue("memory_db")
        return db.uow
    return SqlUnitOfWorkFactory(request.getfixturevalue("store_engine"))


@pytest.fixture
def new_reader(backend: str, request: pytest.FixtureRequest) -> Callable[[], OutboxReader]:
    """Makes a relay's reader of the same store."""
    if backend == "memory":
        db: FakeDatabase = request.getfixturevalue("memory_db")
        return lambda: FakeOutboxReader(db)
    engine: Engine = request.getfixturevalue("store_engine")
    return lambda: SqlOutboxReader(engine)


def add_saga(uow: UnitOfWorkFactory, record: SagaRecord | None = None) -> SagaRecord:
    record = record or make_record()
    with uow() as u:
        u.sagas.add(record)
        u.commit()
    return record


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


# -- schema -------------------------------------------------------------------


@sql_only("the schema is the SQL store's Alembic migrations")
def test_migrations_create_exactly_the_tables_the_code_describes(store_engine: Engine) -> None:
    with store_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        for metadata in (store_metadata, example_metadata):
            diff = [
                d
                for d in compare_metadata(context, metadata)
                # Each metadata only describes its own tables.
                if not (d[0] == "remove_table" and d[1].name not in metadata.tables)
                and not (d[0] == "remove_index" and d[1].table.name not in metadata.tables)
            ]
            assert diff == [], diff


# -- sagas --------------------------------------------------------------------


def test_saga_record_round_trips_with_every_step_field(uow: UnitOfWorkFactory) -> None:
    record = make_record(key="client-key-1")
    state = record.state.with_step(
        0,
        status=StepStatus.COMPENSATION_FAILED,
        attempts=3,
        failures=2,
        compensation_attempts=4,
        compensation_failures=5,
        last_error="boom: 'quoted' \u00e9",
    )
    state = replace(state, status=SagaStatus.FAILED, current=1, reason="needs an operator")
    record = replace(record, state=state, data={"reserve_funds": {"reserved_cents": 100}})
    add_saga(uow, record)

    with uow() as u:
        got = u.sagas.get(record.saga_id)
    assert got is not None
    assert got.state == record.state
    assert got.input == record.input
    assert got.data == record.data
    assert got.idempotency_key == "client-key-1"
    assert got.payload_hash == record.payload_hash
    assert got.created_at == record.created_at
    assert got.updated_at == record.updated_at
    assert got.created_at is not None and got.created_at.tzinfo is not None


def test_save_updates_state_and_changed_steps(uow: UnitOfWorkFactory) -> None:
    record = add_saga(uow)
    with uow() as u:
        got = u.sagas.get(record.saga_id, for_update=True)
        assert got is not None
        state = got.state.with_step(1, status=StepStatus.DONE, attempts=1)
        state = replace(state, current=1)
        u.sagas.save(replace(got, state=state, data={"x": [1, 2]}))
        u.commit()
    with uow() as u:
        again = u.sagas.get(record.saga_id)
    assert again is not None
    assert again.state == state
    assert again.data == {"x": [1, 2]}


def test_save_of_an_unknown_saga_is_refused(uow: UnitOfWorkFactory) -> None:
    with uow() as u, pytest.raises(KeyError):
        u.sagas.save(make_record())


def test_missing_saga_is_none(uow: UnitOfWorkFactory) -> None:
    with uow() as u:
        assert u.sagas.get(new_id()) is None
        assert u.sagas.get(new_id(), for_update=True) is None
        assert u.sagas.by_idempotency_key("nobody") is None


def test_list_and_count_by_status(uow: UnitOfWorkFactory) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    a = add_saga(uow, make_record(status=SagaStatus.RUNNING, updated_at=old))
    b = add_saga(uow, make_record(status=SagaStatus.RUNNING))
    c = add_saga(uow, make_record(status=SagaStatus.COMPLETED))
    d = add_saga(uow, make_record(name="other", status=SagaStatus.COMPLETED))
    with uow() as u:
        assert [r.saga_id for r in u.sagas.list(status="running")] == [b.saga_id, a.saga_id]
        assert {r.saga_id for r in u.sagas.list(status="completed")} == {c.saga_id, d.saga_id}
        assert [r.saga_id for r in u.sagas.list(name="other")] == [d.saga_id]
        stuck = u.sagas.list(status="running", older_than=datetime.now(UTC) - timedelta(hours=1))
        assert [r.saga_id for r in stuck] == [a.saga_id]
        assert len(u.sagas.list(limit=3)) == 3
        assert u.sagas.list(status="running")[0].state.steps == b.state.steps
        assert u.sagas.count_by_status() == {
            ("order-payment", "running"): 2,
            ("order-payment", "completed"): 1,
            ("other", "completed"): 1,
        }


# -- transactions -------------------------------------------------------------


def test_nothing_is_kept_unless_committed(uow: UnitOfWorkFactory) -> None:
    record = make_record()
    message_id = new_id()
    with uow() as u:
        u.sagas.add(record)
        u.outbox.add(message(record.saga_id))
        u.inbox.record(message_id, record.saga_id)
        u.history.add(HistoryEntry(datetime.now(UTC), record.saga_id, "started", {}))
    with uow() as u:
        assert u.sagas.get(record.saga_id) is None
        assert u.outbox.count_unpublished() == 0
        assert not u.inbox.seen(message_id)
        assert u.history.for_saga(record.saga_id) == []


def test_an_escaping_exception_rolls_back(uow: UnitOfWorkFactory) -> None:
    record = make_record()
    with pytest.raises(ZeroDivisionError), uow() as u:
        u.sagas.add(record)
        _ = 1 / 0
    with uow() as u:
        assert u.sagas.get(record.saga_id) is None


def test_explicit_rollback_discards(uow: UnitOfWorkFactory) -> None:
    record = make_record()
    with uow() as u:
        u.sagas.add(record)
        u.rollback()
        u.commit()
    with uow() as u:
        assert u.sagas.get(record.saga_id) is None


@sql_only("a step's SQLAlchemy session: savepoints, statements, its guard on ending")
def test_a_steps_savepoint_rollback_keeps_the_outer_writes(
    uow: UnitOfWorkFactory, store_engine: Engine
) -> None:
    record = make_record()
    with uow() as u:
        u.sagas.add(record)
        with pytest.raises(RuntimeError), u.session.begin_nested():
            u.session.execute(
                insert(order_payment_events).values(
                    saga_id=record.saga_id, order_id="o", step="s", action="a", amount_cents=1
                )
            )
            u.outbox.add(message(record.saga_id))
            raise RuntimeError("step failed")
        with u.session.begin_nested():
            u.session.execute(
                insert(order_payment_events).values(
                    saga_id=record.saga_id, order_id="o", step="s", action="kept", amount_cents=1
                )
            )
        u.commit()
    with uow() as u:
        assert u.sagas.get(record.saga_id) is not None
    with store_engine.connect() as c:
        actions = c.execute(select(order_payment_events.c.action)).scalars().all()
    assert actions == ["kept"]
    assert count(store_engine, outbox) == 0


@sql_only("a step's SQLAlchemy session: savepoints, statements, its guard on ending")
def test_a_database_error_inside_a_savepoint_leaves_the_transaction_usable(
    uow: UnitOfWorkFactory,
) -> None:
    record = make_record()
    with uow() as u:
        u.sagas.add(record)
        with pytest.raises(Exception, match=r"(?i)not.null|null value"), u.session.begin_nested():
            u.session.execute(insert(order_payment_events).values(saga_id=record.saga_id))
        u.history.add(HistoryEntry(datetime.now(UTC), record.saga_id, "after", {}))
        u.commit()
    with uow() as u:
        assert [e.kind for e in u.history.for_saga(record.saga_id)] == ["after"]


@sql_only("a step's SQLAlchemy session: savepoints, statements, its guard on ending")
def test_a_step_may_not_end_the_transaction(uow: UnitOfWorkFactory, store_engine: Engine) -> None:
    record = make_record()
    with uow() as u:
        u.sagas.add(record)
        with pytest.raises(StepEndedTransaction), u.session.begin_nested():
            u.session.execute(
                insert(order_payment_events).values(
                    saga_id=record.saga_id, order_id="o", step="s", action="a", amount_cents=1
                )
            )
            u.session.commit()
        with pytest.raises(StepEndedTransaction):
            u.session.rollback()
        # A step's own savepoints are fine.
        with u.session.begin_nested():
            u.history.add(HistoryEntry(datetime.now(UTC), record.saga_id, "kept", {}))
        u.commit()
    with uow() as u:
        assert u.sagas.get(record.saga_id) is not None
        assert [e.kind for e in u.history.for_saga(record.saga_id)] == ["kept"]
    assert count(store_engine, order_payment_events) == 0


def test_the_unit_of_work_is_usable_after_commit(uow: UnitOfWorkFactory) -> None:
    first, second = make_record(), make_record()
    with uow() as u:
        u.sagas.add(first)
        u.commit()
        u.sagas.add(second)
    with uow() as u:
        assert u.sagas.get(first.saga_id) is not None
        assert u.sagas.get(second.saga_id) is None


def bump_concurrently(
    factory: SqlUnitOfWorkFactory,
    saga_id: str,
    change: Any,
    rounds: int = 15,
    *,
    by_claim: bool = False,
) -> None:
    """Two threads, each `rounds` times: lock the saga, `change` the record, save, commit.

    `by_claim`: the lock is taken as a step takes it, with `claim_step` of a new message.
    """
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(rounds):
                with factory() as u:
                    if by_claim:
                        claim = u.claim_step(new_id(), saga_id)
                        assert claim.fresh
                        got = claim.record
                    else:
                        got = u.sagas.get(saga_id, for_update=True)
                    assert got is not None
                    time.sleep(0.001)  # widen the race a lost update would need
                    u.sagas.save(change(got))
                    u.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@sql_only(
    "row locks across connections: each in-memory unit of work works on its own copy, unlocked"
)
def test_for_update_serialises_read_modify_write(store_engine: Engine) -> None:
    factory = SqlUnitOfWorkFactory(store_engine)
    record = add_saga(factory, replace(make_record(), data={"n": 0}))
    bump_concurrently(factory, record.saga_id, lambda r: replace(r, data={"n": r.data["n"] + 1}))
    with factory() as u:
        got = u.sagas.get(record.saga_id)
    assert got is not None and got.data == {"n": 30}


@sql_only(
    "row locks across connections: each in-memory unit of work works on its own copy, unlocked"
)
def test_for_update_returns_the_steps_as_the_lock_holder_left_them(store_engine: Engine) -> None:
    """The step rows read after waiting for the saga's lock are the committed ones.

    A single `SELECT ... JOIN saga_steps ... FOR UPDATE OF sagas` fails this on
    PostgreSQL: after the wait it re-reads only the locked saga row and returns
    the joined step rows from before the holder's commit (lost updates here, a
    message passing its awaits() check on stale steps in the orchestrator).
    """
    factory = SqlUnitOfWorkFactory(store_engine)
    record = add_saga(factory)

    def one_more_attempt(r: SagaRecord) -> SagaRecord:
        first = r.state.steps[0]
        steps = (replace(first, attempts=first.attempts + 1), *r.state.steps[1:])
        return replace(r, state=replace(r.state, steps=steps))

    bump_concurrently(factory, record.saga_id, one_more_attempt)
    with factory() as u:
        got = u.sagas.get(record.saga_id)
    assert got is not None and got.state.steps[0].attempts == 30


@sql_only(
    "row locks across connections: each in-memory unit of work works on its own copy, unlocked"
)
def test_claim_step_locks_and_returns_the_steps_as_the_lock_holder_left_them(
    store_engine: Engine,
) -> None:
    """The same as the test above through claim_step (on PostgreSQL one statement
    claims the message and locks the saga; the steps are still read after it)."""
    factory = SqlUnitOfWorkFactory(store_engine)
    record = add_saga(factory, replace(make_record(), data={"n": 0}))

    def bump(r: SagaRecord) -> SagaRecord:
        first = r.state.steps[0]
        steps = (replace(first, attempts=first.attempts + 1), *r.state.steps[1:])
        return replace(r, state=replace(r.state, steps=steps), data={"n": r.data["n"] + 1})

    bump_concurrently(factory, record.saga_id, bump, by_claim=True)
    with factory() as u:
        got = u.sagas.get(record.saga_id)
    assert got is not None and got.state.steps[0].attempts == 30 and got.data == {"n": 30}


def test_claim_step_claims_a_message_once_and_locks_its_saga(uow: UnitOfWorkFactory) -> None:
    record = add_saga(uow)
    message_id = new_id()
    with uow() as u:
        expected = u.sagas.get(record.saga_id)
    with uow() as u:
        claim = u.claim_step(message_id, record.saga_id)
        assert claim.fresh and claim.record == expected
        # Claimed in this transaction: a second claim here finds it too.
        assert not u.claim_step(message_id, record.saga_id).fresh
    # Rolled back: the claim went with it.
    with uow() as u:
        assert not u.inbox.seen(message_id)
        assert u.claim_step(message_id, record.saga_id).fresh
        u.commit()
    with uow() as u:
        claim = u.claim_step(message_id, record.saga_id)
        assert not claim.fresh and claim.record is None
        assert u.inbox.seen(message_id)


def test_claim_step_of_a_missing_saga_claims_and_finds_none(uow: UnitOfWorkFactory) -> None:
    with uow() as u:
        claim = u.claim_step(new_id(), new_id())
        assert claim.fresh and claim.record is None


def test_claim_step_takes_a_held_message_only_when_fresh(
    uow: UnitOfWorkFactory, new_reader: Callable[[], OutboxReader]
) -> None:
    """take=True: the held message is marked published with the claim (the relay
    never sends it); a duplicate claim takes nothing; a rolled-back take neither."""
    record = add_saga(uow)
    taken, duplicate, dropped = (message(record.saga_id, 3600) for _ in range(3))
    write_messages(uow, taken, duplicate, dropped)
    with uow() as u:
        u.inbox.record(duplicate.message_id, record.saga_id)
        u.commit()
    with uow() as u:
        assert u.claim_step(taken.message_id, record.saga_id, take=True).fresh
        assert not u.claim_step(duplicate.message_id, record.saga_id, take=True).fresh
        u.commit()
    with uow() as u:
        assert u.claim_step(dropped.message_id, record.saga_id, take=True).fresh
    with uow() as u:
        for m in (taken, duplicate, dropped):
            u.outbox.release(m.message_id)
        u.commit()
    with new_reader().claim(10) as batch:
        assert sorted(p.message_id for p in batch) == sorted(
            [duplicate.message_id, dropped.message_id]
        )


# -- idempotency keys ---------------------------------------------------------


def test_a_second_saga_with_the_same_key_is_refused(uow: UnitOfWorkFactory) -> None:
    first = add_saga(uow, make_record(key="k-1"))
    with uow() as u:
        with pytest.raises(DuplicateIdempotencyKey):
            u.sagas.add(make_record(key="k-1"))
        # The transaction is still usable: the caller can look up the winner.
        winner = u.sagas.by_idempotency_key("k-1")
        assert winner is not None and winner.saga_id == first.saga_id
        other = make_record(key="k-2")
        u.sagas.add(other)
        u.commit()
    with uow() as u:
        assert u.sagas.get(other.saga_id) is not None


def test_start_writes_the_saga_its_messages_and_notes(
    uow: UnitOfWorkFactory, new_reader: Callable[[], OutboxReader], backend: str
) -> None:
    record = replace(make_record(key="k-start"), data={"a": [1, "x"]})
    due, later = message(record.saga_id), message(record.saga_id, delay=3600)
    t0 = datetime.now(UTC)
    notes = [
        HistoryEntry(t0, record.saga_id, "started", {"saga": "x", "version": 1}),
        HistoryEntry(t0 + timedelta(seconds=1), record.saga_id, "note", {}, actor="op"),
    ]
    with uow() as u:
        u.sagas.start(record, [due, later], notes)
        u.commit()
    with uow() as u:
        got = u.sagas.get(record.saga_id)
        expected_saga = u.sagas.by_idempotency_key("k-start")
        assert u.history.for_saga(record.saga_id) == notes
        assert u.outbox.count_unpublished() == 2
    assert got is not None and got == expected_saga
    assert (got.state, got.input, got.data, got.payload_hash) == (
        record.state,
        record.input,
        record.data,
        record.payload_hash,
    )
    # The delayed message waits (the in-memory relay claims delayed rows at
    # once, so unit tests drive retries without a clock); the other is due now.
    with new_reader().claim(10) as batch:
        claimed = [(p.message_id, p.body) for p in batch]
    assert claimed[:1] == [(due.message_id, due.body)]
    assert len(claimed) == (2 if backend == "memory" else 1)


def test_start_with_a_taken_key_writes_nothing(uow: UnitOfWorkFactory) -> None:
    first = add_saga(uow, make_record(key="k-taken"))
    second = make_record(key="k-taken")
    with pytest.raises(DuplicateIdempotencyKey), uow() as u:
        u.sagas.start(
            second,
            [message(second.saga_id)],
            [HistoryEntry(datetime.now(UTC), second.saga_id, "started", {})],
        )
        u.commit()
    with uow() as u:
        assert u.sagas.get(second.saga_id) is None
        assert u.history.for_saga(second.saga_id) == []
        assert u.outbox.count_unpublished() == 0
        winner = u.sagas.by_idempotency_key("k-taken")
        assert winner is not None and winner.saga_id == first.saga_id


@pytest.fixture
def starts(backend: str, request: pytest.FixtureRequest) -> SagaStarts:
    """The enqueue's way of writing a saga (a transaction of its own)."""
    if backend == "memory":
        db: FakeDatabase = request.getfixturevalue("memory_db")
        return StartInUnitOfWork(db.uow)
    return SqlSagaStarts(request.getfixturevalue("store_engine"))


def test_starts_commits_the_saga_its_messages_and_notes_or_nothing(
    uow: UnitOfWorkFactory, starts: SagaStarts
) -> None:
    record = make_record(key="k-starts")
    note = HistoryEntry(datetime.now(UTC), record.saga_id, "started", {"saga": "x"})
    starts(record, [message(record.saga_id)], [note])
    again = make_record(key="k-starts")
    with pytest.raises(DuplicateIdempotencyKey):
        starts(again, [message(again.saga_id)], [note])
    with uow() as u:
        got = u.sagas.get(record.saga_id)
        assert got is not None and got.state == record.state
        assert u.history.for_saga(record.saga_id) == [note]
        assert u.outbox.count_unpublished() == 1
        assert u.sagas.get(again.saga_id) is None


def test_sagas_without_a_key_do_not_collide(uow: UnitOfWorkFactory) -> None:
    add_saga(uow)
    add_saga(uow)
    with uow() as u:
        assert sum(u.sagas.count_by_status().values()) == 2


def blocked_by(engine: Engine, pid: int) -> int:
    """How many backends wait on a lock that backend `pid` holds."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND :pid = ANY(pg_blocking_pids(pid))"
    )
    with engine.connect() as c:
        return int(c.execute(query, {"pid": pid}).scalar_one())


def test_postgresql_two_concurrent_transactions_with_one_key(pg_url: str) -> None:
    engine = create_engine(pg_url)
    factory = SqlUnitOfWorkFactory(engine)
    first, second = make_record(key="race"), make_record(key="race")
    outcome: list[BaseException | str] = []
    try:
        with factory() as a:
            a.sagas.add(first)
            a_pid = a.session.execute(text("SELECT pg_backend_pid()")).scalar_one()

            def contender() -> None:
                try:
                    with factory() as b:
                        b.sagas.add(second)  # waits for `a` to end
                        b.commit()
                    outcome.append("committed")
                except BaseException as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=contender)
            thread.start()
            # Evidence the contender reached the key: PostgreSQL shows it blocked by `a`.
            wait_for(
                lambda: blocked_by(engine, a_pid),
                timeout=10,
                what=f"a backend waiting on a lock of backend {a_pid}",
                interval=0.02,
            )
            assert outcome == [], "the second insert should wait for the first transaction"
            a.commit()
            thread.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], DuplicateIdempotencyKey)
        with factory() as u:
            got = u.sagas.by_idempotency_key("race")
            assert got is not None and got.saga_id == first.saga_id
    finally:
        engine.dispose()


# -- inbox and history --------------------------------------------------------


def test_inbox_remembers_committed_message_ids(uow: UnitOfWorkFactory) -> None:
    saga_id, seen_id, forgotten_id = new_id(), new_id(), new_id()
    with uow() as u:
        assert not u.inbox.seen(seen_id)
        u.inbox.record(seen_id, saga_id)
        assert u.inbox.seen(seen_id)
        u.commit()
    with uow() as u:
        u.inbox.record(forgotten_id, saga_id)
    with uow() as u:
        assert u.inbox.seen(seen_id)
        assert not u.inbox.seen(forgotten_id)


def test_recording_a_message_twice_fails_the_transaction_as_retryable(
    uow: UnitOfWorkFactory, backend: str
) -> None:
    message_id, saga_id = new_id(), new_id()
    with uow() as u:
        u.inbox.record(message_id, saga_id)
        u.commit()
    # The SQL store says which retryable error it is.
    expected = StoreUnavailable if backend == "memory" else ConcurrentDelivery
    with pytest.raises(expected) as caught, uow() as u:
        u.inbox.record(message_id, saga_id)
        u.commit()
    assert isinstance(caught.value, StoreUnavailable)


def test_history_in_order(uow: UnitOfWorkFactory) -> None:
    saga_id = new_id()
    t0 = datetime.now(UTC)
    with uow() as u:
        u.history.add(HistoryEntry(t0, saga_id, "started", {"saga": "x"}))
        u.history.add(HistoryEntry(t0, new_id(), "other saga", {}))
        u.history.add(
            HistoryEntry(t0 + timedelta(seconds=1), saga_id, "resume", {"why": "x"}, actor="op")
        )
        u.commit()
    with uow() as u:
        entries = u.history.for_saga(saga_id)
    assert entries == [
        HistoryEntry(t0, saga_id, "started", {"saga": "x"}),
        HistoryEntry(t0 + timedelta(seconds=1), saga_id, "resume", {"why": "x"}, actor="op"),
    ]


def test_history_added_many_at_once_in_order(uow: UnitOfWorkFactory) -> None:
    saga_id = new_id()
    t0 = datetime.now(UTC)
    entries = [
        HistoryEntry(t0 + timedelta(seconds=i), saga_id, f"kind {i}", {"i": i}) for i in range(4)
    ]
    with uow() as u:
        u.history.add(HistoryEntry(t0, saga_id, "first", {}))
        u.history.add_many(entries[:1])
        u.history.add_many(entries[1:])
        u.history.add_many([])
        u.commit()
    with uow() as u:
        assert u.history.for_saga(saga_id) == [HistoryEntry(t0, saga_id, "first", {}), *entries]


# -- outbox -------------------------------------------------------------------


def write_messages(uow: UnitOfWorkFactory, *messages: OutboxMessage) -> None:
    with uow() as u:
        for m in messages:
            u.outbox.add(m)
        u.commit()


def test_outbox_add_claim_mark_published(
    uow: UnitOfWorkFactory, new_reader: Callable[[], OutboxReader]
) -> None:
    saga_id = new_id()
    sent = [message(saga_id, n=i) for i in range(5)]
    write_messages(uow, *sent)
    reader = new_reader()
    with reader.claim(3) as batch:
        assert [p.message_id for p in batch] == [m.message_id for m in sent[:3]]
        assert [p.body for p in batch] == [m.body for m in sent[:3]]
        assert all(p.saga_id == saga_id for p in batch)
        reader.mark_published([p.id for p in batch])
    with reader.claim(10) as batch:
        assert [p.message_id for p in batch] == [m.message_id for m in sent[3:]]
        # Not marked: these stay for the next claim.
    with reader.claim(10) as batch:
        assert len(batch) == 2
        reader.mark_published([p.id for p in batch])
    with reader.claim(10) as batch:
        assert batch == []


def test_a_failed_publish_leaves_the_rows_unpublished(
    uow: UnitOfWorkFactory, new_reader: Callable[[], OutboxReader]
) -> None:
    write_messages(uow, message(new_id()))
    reader = new_reader()
    with pytest.raises(ConnectionError), reader.claim(10) as batch:
        reader.mark_published([p.id for p in batch])
        raise ConnectionError("broker did not confirm")
    with reader.claim(10) as batch:
        assert len(batch) == 1


def test_mark_published_outside_a_claim(
    uow: UnitOfWorkFactory, new_reader: Callable[[], OutboxReader]
) -> None:
    write_messages(uow, message(new_id()))
    reader = new_reader()
    with reader.claim(10) as batch:
        ids = [p.id for p in batch]
    reader.mark_published(ids)
    with reader.claim(10) as batch:
        assert batch == []


@sql_only(
    "the in-memory relay claims a delayed row at once, so unit tests drive retries without a clock"
)
def test_delayed_rows_wait_until_they_are_due(uow: UnitOfWorkFactory, store_engine: Engine) -> None:
    saga_id = new_id()
    soon, later, now = message(saga_id, 0.6), message(saga_id, 3600), message(saga_id)
    write_messages(uow, soon, later, now)
    reader = SqlOutboxReader(store_engine)
    with reader.claim(10) as batch:
        assert [p.message_id for p in batch] == [now.message_id]
        reader.mark_published([p.id for p in batch])
    time.sleep(0.8)
    with reader.claim(10) as batch:
        assert [p.message_id for p in batch] == [soon.message_id]


@sql_only(
    "the in-memory relay claims a delayed row at once, so unit tests drive retries without a clock"
)
def test_a_held_message_taken_by_its_step_is_never_claimed(
    uow: UnitOfWorkFactory, store_engine: Engine
) -> None:
    """Inline steps: the message is written held back, then marked published by the
    transaction of the step that runs it; a rolled-back take leaves it to the relay."""
    saga_id = new_id()
    taken, dropped = message(saga_id, 0.6), message(saga_id, 0.6)
    write_messages(uow, taken, dropped)
    with uow() as u:
        u.outbox.take(taken.message_id)
        u.commit()
    with uow() as u:
        u.outbox.take(dropped.message_id)  # rolled back: the step did not commit
    reader = SqlOutboxReader(store_engine)
    with reader.claim(10) as batch:
        assert batch == []  # neither is due yet
    time.sleep(0.8)
    with reader.claim(10) as batch:
        assert [p.message_id for p in batch] == [dropped.message_id]


def test_releasing_a_held_message_makes_it_due_now(
    uow: UnitOfWorkFactory, new_reader: Callable[[], OutboxReader]
) -> None:
    held = message(new_id(), 3600)
    write_messages(uow, held)
    with uow() as u:
        u.outbox.release(held.message_id)
        u.commit()
    with new_reader().claim(10) as batch:
        assert [p.message_id for p in batch] == [held.message_id]


def test_a_lower_id_found_unpublished_behind_published_ones_is_still_claimed(
    uow: UnitOfWorkFactory, new_reader: Callable[[], OutboxReader]
) -> None:
    first, second = message(new_id()), message(new_id())
    write_messages(uow, first, second)
    with uow() as u:
        u.outbox.take(second.message_id)
        u.commit()
    with new_reader().claim(10) as batch:
        assert [p.message_id for p in batch] == [first.message_id]


def test_postgresql_a_row_committed_late_with_a_lower_id_is_claimed(pg_url: str) -> None:
    engine = create_engine(pg_url)
    factory = SqlUnitOfWorkFactory(engine)
    reader = SqlOutboxReader(engine)
    early, late = message(new_id()), message(new_id())
    try:
        with factory() as slow:
            slow.outbox.add(late)  # takes the lower id, commits last
            write_messages(factory, early)
            with reader.claim(10) as batch:
                assert [p.message_id for p in batch] == [early.message_id]
                reader.mark_published([p.id for p in batch])
                early_id = batch[0].id
            slow.commit()
        with reader.claim(10) as batch:
            assert [p.message_id for p in batch] == [late.message_id]
            assert batch[0].id < early_id
    finally:
        engine.dispose()


def test_postgresql_two_claimers_take_disjoint_rows(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        sent = [message(new_id(), n=i) for i in range(10)]
        write_messages(SqlUnitOfWorkFactory(engine), *sent)
        one, two = SqlOutboxReader(engine), SqlOutboxReader(engine)
        with one.claim(6) as a, two.claim(10) as b:
            ids_a, ids_b = {p.id for p in a}, {p.id for p in b}
            assert len(ids_a) == 6 and len(ids_b) == 4
            assert ids_a.isdisjoint(ids_b)
            one.mark_published(list(ids_a))
            two.mark_published(list(ids_b))
        with one.claim(10) as rest:
            assert rest == []
    finally:
        engine.dispose()


@sql_only("claims from several connections at once: in-memory readers do not share claims")
def test_claimers_in_threads_publish_every_row_once(
    uow: UnitOfWorkFactory, store_engine: Engine
) -> None:
    total = 120
    write_messages(uow, *[message(new_id(), n=i) for i in range(total)])
    published: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def relay() -> None:
        reader = SqlOutboxReader(store_engine)
        try:
            while True:
                with reader.claim(7) as batch:
                    if not batch:
                        return
                    with lock:
                        published.extend(p.id for p in batch)
                    reader.mark_published([p.id for p in batch])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=relay) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(published) == total == len(set(published))


def test_oldest_unpublished_age(
    uow: UnitOfWorkFactory, new_reader: Callable[[], OutboxReader]
) -> None:
    reader = new_reader()
    assert reader.oldest_unpublished_age() is None
    write_messages(uow, message(new_id(), delay=3600))
    assert reader.oldest_unpublished_age() is None  # not due yet: not a stuck relay
    write_messages(uow, message(new_id()))
    time.sleep(0.2)
    age = reader.oldest_unpublished_age()
    assert age is not None and 0.1 <= age < 30
    if isinstance(reader, SqlOutboxReader):
        assert reader.pending_count() == 2
    with uow() as u:
        assert u.outbox.count_unpublished() == 2


@sql_only("retention is the SQL store's purge(engine)")
def test_purge_removes_only_old_published_rows_and_old_inbox_ids(
    uow: UnitOfWorkFactory, store_engine: Engine
) -> None:
    old_sent, new_sent, unsent = message(new_id()), message(new_id()), message(new_id())
    write_messages(uow, old_sent, new_sent, unsent)
    with uow() as u:
        u.inbox.record("old-id", new_id())
        u.inbox.record("new-id", new_id())
        u.commit()
    reader = SqlOutboxReader(store_engine)
    with reader.claim(2) as batch:
        reader.mark_published([p.id for p in batch])
    long_ago = datetime.now(UTC) - timedelta(days=30)
    with store_engine.begin() as c:
        c.execute(
            update(outbox)
            .where(outbox.c.message_id == old_sent.message_id)
            .values(published_at=long_ago)
        )
        c.execute(
            text("UPDATE inbox SET processed_at = :t WHERE message_id = 'old-id'"),
            {"t": long_ago.replace(tzinfo=None) if c.dialect.name == "sqlite" else long_ago},
        )
    gone = purge(store_engine, retention=timedelta(days=7), batch=1)
    assert (gone.outbox, gone.inbox) == (1, 1)
    with store_engine.connect() as c:
        left = set(c.execute(select(outbox.c.message_id)).scalars())
    assert left == {new_sent.message_id, unsent.message_id}
    with uow() as u:
        assert u.inbox.seen("new-id") and not u.inbox.seen("old-id")


# -- the services' queries (sweeper, audit, metrics) -----------------------------


def test_idle_sagas_are_the_sweepers_candidates(uow: UnitOfWorkFactory) -> None:
    now = datetime.now(UTC)
    cutoff = now - timedelta(minutes=10)

    def idle(minutes: float, status: SagaStatus = SagaStatus.RUNNING) -> SagaRecord:
        return add_saga(
            uow, make_record(status=status, updated_at=now - timedelta(minutes=minutes))
        )

    oldest = idle(60)
    compensating = idle(40, SagaStatus.COMPENSATING)
    sent_on = idle(30)  # its message was published: it may be lost
    idle(5)  # updated after the cutoff
    for status in (SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.COMPENSATED):
        idle(90, status)  # terminal
    waiting = idle(50)  # a message on its way (a delayed retry, a relay behind)
    held = idle(45)  # a held-back message is on its way too
    write_messages(uow, message(waiting.saga_id), message(held.saga_id, delay=3600))
    taken = message(sent_on.saga_id)
    write_messages(uow, taken)
    with uow() as u:
        u.outbox.take(taken.message_id)
        u.commit()

    with uow() as u:
        assert u.sagas.idle(updated_before=cutoff, limit=10) == [
            oldest.saga_id,
            compensating.saga_id,
            sent_on.saga_id,
        ]
        assert u.sagas.idle(updated_before=cutoff, limit=2) == [
            oldest.saga_id,
            compensating.saga_id,
        ]
        assert u.sagas.idle(updated_before=now - timedelta(minutes=50), limit=10) == [
            oldest.saga_id
        ]


def test_saga_ids_in_creation_order_and_since(uow: UnitOfWorkFactory) -> None:
    t0 = datetime.now(UTC) - timedelta(days=1)
    made = []
    for minutes in (30, 10, 20):
        record = make_record()
        made.append(record)
        add_saga(uow, replace(record, created_at=t0 + timedelta(minutes=minutes)))
    late, early, middle = made
    with uow() as u:
        assert u.sagas.ids() == [early.saga_id, middle.saga_id, late.saga_id]
        since = t0 + timedelta(minutes=20)
        assert u.sagas.ids(created_since=since) == [middle.saga_id, late.saga_id]
        assert u.sagas.ids(created_since=t0 + timedelta(hours=1)) == []


def attempt(
    saga_id: str,
    state: AttemptState,
    created_at: datetime,
    *,
    step: str = "reserve_funds",
    code: int | None = None,
) -> LedgerAttemptRecord:
    return LedgerAttemptRecord(
        saga_id=saga_id,
        step=step,
        purpose="do",
        txid=uuid.uuid4().hex + uuid.uuid4().hex,
        channel="mychannel",
        envelope=b"envelope " + saga_id.encode(),
        state=state,
        code=code,
        block=None if code is None else 7,
        created_at=created_at,
    )


def add_attempts(uow: UnitOfWorkFactory, *attempts: LedgerAttemptRecord) -> None:
    with uow() as u:
        for a in attempts:
            u.ledger_attempts.add(a)
        u.commit()


def test_unsettled_attempts_of_terminal_sagas(uow: UnitOfWorkFactory) -> None:
    now = datetime.now(UTC)
    failed = add_saga(uow, make_record(status=SagaStatus.FAILED))
    compensated = add_saga(uow, make_record(status=SagaStatus.COMPENSATED))
    running = add_saga(uow, make_record(status=SagaStatus.RUNNING))
    old, older, oldest = (now - timedelta(hours=h) for h in (1, 2, 3))
    picked_second = attempt(failed.saga_id, AttemptState.PREPARED, old)
    picked_first = attempt(compensated.saga_id, AttemptState.SUBMITTED, older)
    add_attempts(
        uow,
        picked_second,
        picked_first,
        # settled: the watcher is done with it
        attempt(failed.saga_id, AttemptState.COMMITTED, oldest, step="x", code=11),
        # too recent
        attempt(failed.saga_id, AttemptState.PREPARED, now, step="y"),
        # the saga still moves: the watcher and the worker follow it
        attempt(running.saga_id, AttemptState.SUBMITTED, oldest),
    )
    cutoff = now - timedelta(minutes=30)
    with uow() as u:
        found = u.ledger_attempts.unsettled_of_terminal_sagas(older_than=cutoff, limit=10)
        assert [a.txid for a in found] == [picked_first.txid, picked_second.txid]
        assert found[0] == replace(picked_first, created_at=found[0].created_at)
        assert found[0].created_at == older
        one = u.ledger_attempts.unsettled_of_terminal_sagas(older_than=cutoff, limit=1)
        assert [a.txid for a in one] == [picked_first.txid]


def test_unsettled_attempts_counted_by_state_and_every_envelope(uow: UnitOfWorkFactory) -> None:
    now = datetime.now(UTC)
    saga = add_saga(uow)
    made = [
        attempt(saga.saga_id, AttemptState.PREPARED, now, step="a"),
        attempt(saga.saga_id, AttemptState.PREPARED, now, step="b"),
        attempt(saga.saga_id, AttemptState.SUBMITTED, now, step="c"),
        attempt(saga.saga_id, AttemptState.COMMITTED, now, step="d", code=0),
    ]
    with uow() as u:
        assert u.ledger_attempts.count_unsettled() == {}
        assert u.ledger_attempts.envelopes() == []
    add_attempts(uow, *made)
    with uow() as u:
        assert u.ledger_attempts.count_unsettled() == {"prepared": 2, "submitted": 1}
        assert sorted(u.ledger_attempts.envelopes()) == sorted((a.txid, a.envelope) for a in made)
        u.ledger_attempts.mark_committed(made[2].txid, 0, 8)
        assert u.ledger_attempts.count_unsettled() == {"prepared": 2}


def test_outbox_lag_and_unpublished_count_in_a_unit_of_work(uow: UnitOfWorkFactory) -> None:
    with uow() as u:
        assert u.outbox.oldest_unpublished_age() is None
        assert u.outbox.count_unpublished() == 0
    held = message(new_id(), delay=3600)
    write_messages(uow, held)
    with uow() as u:
        assert u.outbox.oldest_unpublished_age() is None  # not due: not a relay behind
        assert u.outbox.count_unpublished() == 1
    due, taken = message(new_id()), message(new_id())
    write_messages(uow, due, taken)
    with uow() as u:
        u.outbox.take(taken.message_id)
        u.commit()
    time.sleep(0.3)
    with uow() as u:
        age = u.outbox.oldest_unpublished_age()
        assert age is not None and 0.2 <= age < 30
        assert u.outbox.count_unpublished() == 2  # the held one and the due one


def write_event(session: Any, saga_id: str) -> None:
    if isinstance(session, FakeSession):
        session.insert("order_payment_events", saga_id=saga_id, action="a")
    else:
        session.execute(
            insert(order_payment_events).values(
                saga_id=saga_id, order_id="o", step="s", action="a", amount_cents=1
            )
        )


def events(uow: UnitOfWorkFactory) -> int:
    with uow() as u, u.step_session() as session:
        if isinstance(session, FakeSession):
            return len(session.rows("order_payment_events"))
        return int(
            session.execute(select(func.count()).select_from(order_payment_events)).scalar_one()
        )


def test_a_steps_writes_commit_with_the_unit_of_work(uow: UnitOfWorkFactory) -> None:
    kept, dropped = add_saga(uow), add_saga(uow)
    with uow() as u:
        with u.step_session() as session:
            write_event(session, dropped.saga_id)
        u.history.add(HistoryEntry(datetime.now(UTC), dropped.saga_id, "ran", {}))
        # not committed
    assert events(uow) == 0
    with uow() as u:
        with u.step_session() as session:
            write_event(session, kept.saga_id)
        u.history.add(HistoryEntry(datetime.now(UTC), kept.saga_id, "ran", {}))
        u.commit()
    assert events(uow) == 1
    with uow() as u:
        assert [e.kind for e in u.history.for_saga(kept.saga_id)] == ["ran"]
        assert u.history.for_saga(dropped.saga_id) == []


@sql_only("the in-memory session writes at once; SQLAlchemy holds ORM rows until a flush")
def test_a_steps_pending_orm_rows_fail_at_the_end_of_its_session(
    uow: UnitOfWorkFactory,
) -> None:
    from sqlalchemy.orm import registry as orm_registry

    mapper = orm_registry()

    class Event:
        pass

    mapper.map_imperatively(Event, order_payment_events)
    try:
        record = add_saga(uow)
        with (
            uow() as u,
            pytest.raises(Exception, match=r"(?i)not.null|null value"),
            u.step_session() as session,
        ):
            bad = Event()
            bad.saga_id = record.saga_id  # type: ignore[attr-defined]
            session.add(bad)  # the required columns are missing
    finally:
        mapper.dispose()


# -- a lost connection --------------------------------------------------------


def test_postgresql_a_killed_connection_is_store_unavailable_and_the_next_one_works(
    pg_url: str,
) -> None:
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    factory = SqlUnitOfWorkFactory(engine)
    record = make_record()
    try:
        with pytest.raises(StoreUnavailable), factory() as u:
            u.sagas.add(record)
            pid = u.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with create_engine(pg_url).connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            u.commit()
        # The disconnect invalidated the pooled connection: the next one is new.
        with factory() as u:
            assert u.sagas.get(record.saga_id) is None
            u.sagas.add(record)
            u.commit()
        with factory() as u:
            assert u.sagas.get(record.saga_id) is not None
    finally:
        engine.dispose()


def test_postgresql_a_connection_that_died_while_idle_is_replaced_before_use(
    pg_url: str,
) -> None:
    """A pooled connection idle for more than PING_AFTER_IDLE_SECONDS is pinged at
    checkout; one whose server side is gone is swapped, the transaction never sees it."""
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    factory = SqlUnitOfWorkFactory(engine)
    try:
        with factory() as u:
            pid = u.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with create_engine(pg_url).connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)
        with factory() as u:
            assert u.session.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()


def test_an_unreachable_database_is_store_unavailable_at_the_door() -> None:
    engine = create_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(StoreUnavailable), SqlUnitOfWorkFactory(engine)():
        pass
    with pytest.raises(StoreUnavailable), SqlOutboxReader(engine).claim(1):
        pass
