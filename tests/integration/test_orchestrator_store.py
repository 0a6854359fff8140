"""The orchestrator on the real store, PostgreSQL and SQLite, with no broker.

A loop stands in for relay and workers: claim due outbox rows, mark them
published, then hand each body to `Orchestrator.handle` (outside the claim: on
SQLite the claim holds the write lock a step's transaction needs).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from saga.adapters.sql import TRANSIENT_ERRORS, SqlOutboxReader, SqlUnitOfWorkFactory
from saga.adapters.sql.tables import ALL_TABLES, inbox, outbox
from saga.app.errors import IdempotencyConflict
from saga.app.orchestrator import Orchestrator
from saga.app.steps import Outcome
from saga.core.definitions import Registry, SagaDefinition, Step, StepContext
from saga.core.retry import RetryPolicy
from saga.core.state import SagaStatus, StepStatus
from saga.core.step_message import StepMessage
from saga.examples import order_payment
from saga.examples.order_payment_tables import order_payment_events
from saga.ports.store import StoreUnavailable
from tests.support.outbox import drive_outbox

# -- a saga whose failures the example cannot show ------------------------------


class Later(BaseModel):
    order_id: str


def _write(ctx: StepContext, action: str) -> None:
    ctx.session.execute(
        insert(order_payment_events).values(
            saga_id=ctx.saga_id, order_id="x", step=ctx.step, action=action, amount_cents=1
        )
    )


def reserve(ctx: StepContext) -> None:
    _write(ctx, "reserve")


def release_but_fail(ctx: StepContext) -> None:
    _write(ctx, "release")
    raise RuntimeError("ledger of reservations is read-only")


def charge_but_fail(ctx: StepContext) -> None:
    _write(ctx, "charge")
    raise ValueError("card expired")


TRANSIENT_ONCE: dict[str, int] = {}


def flaky_database(ctx: StepContext) -> None:
    _write(ctx, "flaky")
    if TRANSIENT_ONCE.get(ctx.saga_id, 0) == 0:
        TRANSIENT_ONCE[ctx.saga_id] = 1
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))


quick = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)

broken_undo = SagaDefinition(
    name="broken-undo",
    version=1,
    input_model=Later,
    steps=(
        Step("reserve", reserve, compensation=release_but_fail, compensation_retry=quick),
        Step("charge", charge_but_fail, pivot=True, retry=quick),
    ),
)

flaky = SagaDefinition(
    name="flaky-db", version=1, input_model=Later, steps=(Step("flaky", flaky_database),)
)


def swallow_a_database_error(ctx: StepContext) -> None:
    """Writes, then runs a statement that fails and carries on as if nothing happened."""
    _write(ctx, "swallow")
    with contextlib.suppress(DBAPIError):
        ctx.session.execute(text("SELECT 1 / 0"))


swallowing = SagaDefinition(
    name="swallowing",
    version=1,
    input_model=Later,
    steps=(Step("swallow", swallow_a_database_error, retry=quick),),
)


# -- driving ----------------------------------------------------------------------


@pytest.fixture
def orchestrator(store_engine: Engine) -> Orchestrator:
    TRANSIENT_ONCE.clear()  # saga ids repeat from test to test
    registry = order_payment.register(Registry())
    registry.add(broken_undo)
    registry.add(flaky)
    registry.add(swallowing)
    ids = (f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 10**9))
    return Orchestrator(
        registry,
        SqlUnitOfWorkFactory(store_engine),
        new_id=lambda: next(ids),
        transient_errors=TRANSIENT_ERRORS,
    )


def deliveries(engine: Engine, *, timeout: float = 30.0) -> Iterator[StepMessage]:
    """The outbox messages in publish order (taken off the outbox), for a test to handle."""
    reader = SqlOutboxReader(engine)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with reader.claim(50) as batch:
            reader.mark_published([p.id for p in batch])
        for pending in batch:
            yield StepMessage.from_body(pending.body)
        if not batch:
            if reader.pending_count() == 0:
                return
            time.sleep(0.01)  # a retry is waiting out its backoff
    raise AssertionError("the outbox did not drain in time")


def run(orchestrator: Orchestrator, engine: Engine) -> Counter[Outcome]:
    return Counter(drive_outbox(orchestrator, engine, batch=50, idle=0.01))


def payment(order: str, simulate: str = "none") -> dict[str, Any]:
    return {
        "order_id": order,
        "customer_id": "c-1",
        "amount_cents": 1250,
        "currency": "EUR",
        "simulate": simulate,
    }


def effects(engine: Engine, saga_id: str) -> list[str]:
    with engine.connect() as c:
        rows = c.execute(
            select(order_payment_events.c.action)
            .where(order_payment_events.c.saga_id == saga_id)
            .order_by(order_payment_events.c.id)
        )
        return [r[0] for r in rows]


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        return {
            t.name: c.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (*ALL_TABLES, order_payment_events)
        }


# -- outcomes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("simulate", "status", "actions"),
    [
        ("none", SagaStatus.COMPLETED, ["reserve", "payment", "confirm", "notify"]),
        ("flaky_notify", SagaStatus.COMPLETED, ["reserve", "payment", "confirm", "notify"]),
        ("decline_payment", SagaStatus.COMPENSATED, ["reserve", "release"]),
        ("reject_order", SagaStatus.COMPENSATED, ["reserve", "payment", "void", "release"]),
    ],
)
def test_example_saga_reaches_its_outcome_with_each_action_once(
    orchestrator: Orchestrator,
    store_engine: Engine,
    simulate: str,
    status: SagaStatus,
    actions: list[str],
) -> None:
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-1", simulate)).saga_id
    outcomes = run(orchestrator, store_engine)
    assert set(outcomes) == {Outcome.APPLIED}
    record, history = orchestrator.get(saga_id)
    assert record.state.status is status
    assert effects(store_engine, saga_id) == actions
    assert history[0].kind == "started"
    assert history[-1].kind == f"saga {status}"
    if simulate == "flaky_notify":
        notify = record.state.steps[-1]
        assert (notify.status, notify.attempts, notify.failures) == (StepStatus.DONE, 3, 2)
        assert [e.kind for e in history].count("step failed") == 2
    if simulate == "reject_order":
        assert record.state.reason
    # Every message ran once and left its id in the inbox.
    assert row_counts(store_engine)["inbox"] == outcomes[Outcome.APPLIED]


def test_a_compensation_that_fails_for_good_leaves_the_saga_failed_with_reason(
    orchestrator: Orchestrator, store_engine: Engine
) -> None:
    saga_id = orchestrator.enqueue("broken-undo", {"order_id": "o-2"}).saga_id
    run(orchestrator, store_engine)
    record, _ = orchestrator.get(saga_id)
    assert record.state.status is SagaStatus.FAILED
    assert record.state.reason and "read-only" in record.state.reason
    reserve_step, charge_step = record.state.steps
    assert charge_step.failures == 2
    assert charge_step.last_error and charge_step.last_error.endswith("card expired")
    assert reserve_step.status is StepStatus.COMPENSATION_FAILED
    assert reserve_step.compensation_failures == 2
    # The failing action's and compensation's own writes were rolled back each time.
    assert effects(store_engine, saga_id) == ["reserve"]


def test_many_sagas_on_one_store_each_action_exactly_once(
    orchestrator: Orchestrator, store_engine: Engine
) -> None:
    kinds = ["none", "decline_payment", "reject_order", "flaky_notify"] * 5
    ids = {
        orchestrator.enqueue(order_payment.NAME, payment(f"o-{i}", k)).saga_id: k
        for i, k in enumerate(kinds)
    }
    run(orchestrator, store_engine)
    with store_engine.connect() as c:
        per_action = c.execute(
            select(
                order_payment_events.c.saga_id, order_payment_events.c.action, func.count()
            ).group_by(order_payment_events.c.saga_id, order_payment_events.c.action)
        ).all()
    assert per_action and all(n == 1 for _, _, n in per_action)
    with SqlUnitOfWorkFactory(store_engine)() as u:
        counts = u.sagas.count_by_status()
    assert counts == {
        (order_payment.NAME, "completed"): 10,
        (order_payment.NAME, "compensated"): 10,
    }
    assert len(ids) == 20


# -- exactly once -----------------------------------------------------------------


def test_a_message_delivered_twice_is_a_duplicate_and_writes_nothing(
    orchestrator: Orchestrator, store_engine: Engine
) -> None:
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-3")).saga_id
    first = next(deliveries(store_engine))
    assert orchestrator.handle(first) is Outcome.APPLIED
    before = row_counts(store_engine)
    assert orchestrator.handle(first) is Outcome.DUPLICATE
    assert row_counts(store_engine) == before
    run(orchestrator, store_engine)
    assert effects(store_engine, saga_id) == ["reserve", "payment", "confirm", "notify"]


def test_a_stale_message_is_recorded_and_ignored(
    orchestrator: Orchestrator, store_engine: Engine
) -> None:
    saga_id = orchestrator.enqueue(order_payment.NAME, payment("o-4")).saga_id
    first = next(deliveries(store_engine))
    assert orchestrator.handle(first) is Outcome.APPLIED
    # The same command under a new message id: the saga no longer awaits it.
    again = StepMessage(**{**first.__dict__, "message_id": "another-delivery-id"})
    assert orchestrator.handle(again) is Outcome.STALE
    run(orchestrator, store_engine)
    assert effects(store_engine, saga_id) == ["reserve", "payment", "confirm", "notify"]


def test_a_lost_database_inside_a_step_commits_nothing_and_the_redelivery_runs_once(
    orchestrator: Orchestrator, store_engine: Engine
) -> None:
    saga_id = orchestrator.enqueue("flaky-db", {"order_id": "o-5"}).saga_id
    message = next(deliveries(store_engine))
    before = row_counts(store_engine)
    with pytest.raises(StoreUnavailable):
        orchestrator.handle(message)
    assert row_counts(store_engine) == before  # not even the inbox record
    assert orchestrator.handle(message) is Outcome.APPLIED
    record, _ = orchestrator.get(saga_id)
    assert record.state.status is SagaStatus.COMPLETED
    assert record.state.steps[0].failures == 0
    assert effects(store_engine, saga_id) == ["flaky"]


def test_a_step_that_swallows_a_database_error_fails_by_its_retry_policy(
    orchestrator: Orchestrator, store_engine: Engine
) -> None:
    """PostgreSQL aborts the transaction at the failed statement, so nothing of the
    step can commit: the step fails (no dead letter, nothing kept). SQLite keeps
    the transaction usable, and the step succeeds there."""
    saga_id = orchestrator.enqueue("swallowing", {"order_id": "o-6"}).saga_id
    outcomes = run(orchestrator, store_engine)
    record, _ = orchestrator.get(saga_id)
    assert set(outcomes) == {Outcome.APPLIED}
    if store_engine.dialect.name == "postgresql":
        # Both attempts failed; nothing before it to undo.
        assert record.state.status is SagaStatus.COMPENSATED
        assert record.state.steps[0].failures == 2
        assert "StepAbortedTransaction" in (record.state.steps[0].last_error or "")
        assert effects(store_engine, saga_id) == []
    else:
        assert record.state.status is SagaStatus.COMPLETED
        assert effects(store_engine, saga_id) == ["swallow"]


# -- enqueue ------------------------------------------------------------------------


def test_enqueue_with_a_key_is_idempotent(orchestrator: Orchestrator, store_engine: Engine) -> None:
    first = orchestrator.enqueue(order_payment.NAME, payment("o-6"), idempotency_key="k-6")
    again = orchestrator.enqueue(order_payment.NAME, payment("o-6"), idempotency_key="k-6")
    assert first.created and not again.created and again.saga_id == first.saga_id
    with pytest.raises(IdempotencyConflict):
        orchestrator.enqueue(order_payment.NAME, payment("o-7"), idempotency_key="k-6")
    counts = row_counts(store_engine)
    assert counts["sagas"] == 1 and counts["outbox"] == 1 and counts["inbox"] == 0
    with store_engine.connect() as c:
        assert c.execute(select(outbox.c.saga_id)).scalar_one() == first.saga_id
        assert c.execute(select(func.count()).select_from(inbox)).scalar_one() == 0
