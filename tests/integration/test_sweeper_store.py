"""The stuck-saga sweeper on real PostgreSQL, driven in-process (no broker needed).

A lost step message is simulated by deleting the saga's outbox row; "no progress
for an hour" by moving the saga's updated_at back, so the real clock is used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from saga.adapters.sql import TRANSIENT_ERRORS, SqlOutboxReader, SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.repository import idle_sagas_query
from saga.adapters.sql.tables import outbox, sagas
from saga.app.orchestrator import Orchestrator
from saga.app.sweeper import REDRIVE, STUCK, SweepConfig, Sweeper
from saga.core.definitions import Registry
from saga.core.state import SagaStatus, StepStatus
from saga.core.step_message import StepMessage
from saga.entrypoints.cli.main import app as cli
from saga.examples import order_payment
from saga.examples.order_payment import NAME
from tests.support.outbox import drive_outbox

PAYMENT = {"order_id": "o-1", "customer_id": "c-1", "amount_cents": 500, "currency": "EUR"}


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def orch(engine: Engine) -> Orchestrator:
    return Orchestrator(
        order_payment.register(Registry()),
        SqlUnitOfWorkFactory(engine),
        transient_errors=TRANSIENT_ERRORS,
    )


def sweeper(orch: Orchestrator, **config: float) -> Sweeper:
    return Sweeper(orch.uow_factory, orch.registry, SweepConfig(**config))  # type: ignore[arg-type]


def lose_messages(engine: Engine, saga_id: str) -> int:
    with engine.begin() as c:
        return int(c.execute(delete(outbox).where(outbox.c.saga_id == saga_id)).rowcount)


def idle_for(engine: Engine, saga_id: str, seconds: float) -> None:
    with engine.begin() as c:
        c.execute(
            update(sagas)
            .where(sagas.c.id == saga_id)
            .values(updated_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def test_a_saga_whose_message_was_lost_is_redriven_once_and_completes(
    orch: Orchestrator, engine: Engine
) -> None:
    saga_id = orch.enqueue(NAME, PAYMENT).saga_id
    assert lose_messages(engine, saga_id) == 1
    s = sweeper(orch, grace=60)
    assert s.sweep().redriven == [], "not due: the step's 30s timeout has not passed"
    idle_for(engine, saga_id, 3600)

    report = s.sweep()
    assert report.redriven == [saga_id]
    # The re-drive is in the outbox now, so the saga is no longer a candidate; and
    # even asked directly, the rate limit holds a second one back.
    assert s.sweep().redriven == []
    assert s.sweep(saga_id=saga_id).rate_limited == 1
    drive_outbox(orch, engine)

    record, history = orch.get(saga_id)
    assert record.state.status is SagaStatus.COMPLETED
    redrives = [h for h in history if h.kind == REDRIVE]
    assert len(redrives) == 1 and redrives[0].actor == "sweeper"
    assert redrives[0].detail["step"] == "reserve_funds" and redrives[0].detail["attempt"] == 1
    with engine.connect() as c:
        effects = order_payment.effects(c, saga_id)  # type: ignore[arg-type]
    assert effects == ["reserve", "payment", "confirm", "notify"]


def test_no_progress_after_the_redrive_budget_marks_the_saga_for_an_operator(
    orch: Orchestrator, engine: Engine, pg_url: str
) -> None:
    saga_id = orch.enqueue(NAME, PAYMENT).saga_id
    idle_for(engine, saga_id, 3600)
    s = sweeper(orch, grace=60, redrive_interval=0, max_redrives=2)
    for _ in range(2):
        lose_messages(engine, saga_id)  # every re-drive is lost too
        assert s.sweep().redriven == [saga_id]
    lose_messages(engine, saga_id)
    report = s.sweep()
    assert report.marked_stuck == [saga_id] and report.redriven == []

    record, history = orch.get(saga_id)
    state = record.state
    assert state.status is SagaStatus.FAILED
    assert state.reason and state.reason.startswith("stuck: no progress at step 'reserve_funds'")
    assert state.steps[0].status is StepStatus.FAILED
    assert [h.kind for h in history].count(STUCK) == 1
    assert s.sweep().marked_stuck == []  # terminal now: left to the operator

    out = CliRunner().invoke(cli, ["list", "--status", "failed", "--json", "--db", pg_url])
    listed = json.loads(out.stdout)  # totals go to stderr
    assert [r["id"] for r in listed] == [saga_id]
    assert listed[0]["reason"].startswith("stuck: ")

    # The operator's way out: resume runs the step again with a fresh attempt.
    orch.resume(saga_id, actor="ops", why="message lost; re-run")
    drive_outbox(orch, engine)
    assert orch.get(saga_id)[0].state.status is SagaStatus.COMPLETED


def test_a_compensating_saga_is_redriven_with_its_compensation(
    orch: Orchestrator, engine: Engine
) -> None:
    saga_id = orch.enqueue(NAME, {**PAYMENT, "simulate": "decline_payment"}).saga_id
    reader = SqlOutboxReader(engine)
    # Run until the saga is compensating and its RunCompensation message is written.
    for _ in range(2):
        with reader.claim(10) as batch:
            reader.mark_published([p.id for p in batch])
        for pending in batch:
            orch.handle(StepMessage.from_body(pending.body))
    assert orch.get(saga_id)[0].state.status is SagaStatus.COMPENSATING
    lose_messages(engine, saga_id)
    idle_for(engine, saga_id, 3600)
    assert sweeper(orch, grace=60).sweep().redriven == [saga_id]
    with engine.connect() as c:
        body = c.execute(text("select body from outbox where saga_id = :s"), {"s": saga_id}).one()
    assert body[0]["phase"] == "undo" and body[0]["step"] == "reserve_funds"
    drive_outbox(orch, engine)
    assert orch.get(saga_id)[0].state.status is SagaStatus.COMPENSATED


def test_sagas_with_a_message_waiting_in_the_outbox_are_not_candidates(
    orch: Orchestrator, engine: Engine
) -> None:
    waiting = orch.enqueue(NAME, PAYMENT).saga_id  # its first message is unpublished
    idle_for(engine, waiting, 3600)
    assert sweeper(orch).sweep().candidates == 0


def test_saga_sweep_command_redrives_a_lost_message(
    orch: Orchestrator, engine: Engine, pg_url: str
) -> None:
    saga_id = orch.enqueue(NAME, PAYMENT).saga_id
    lose_messages(engine, saga_id)
    idle_for(engine, saga_id, 3600)
    result = CliRunner().invoke(cli, ["sweep", "--db", pg_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["redriven"] == [saga_id]
    drive_outbox(orch, engine)
    assert orch.get(saga_id)[0].state.status is SagaStatus.COMPLETED


def test_the_candidate_query_is_index_backed(engine: Engine) -> None:
    """EXPLAIN of the sweep's query (PostgreSQL 15, 20k sagas of which 200 running,
    ANALYZEd, empty outbox):

        Limit
          ->  Sort  (Sort Key: sagas.updated_at)
                ->  Nested Loop Anti Join
                      ->  Bitmap Heap Scan on sagas
                            Recheck Cond: status = ANY (running, compensating) AND updated_at < t
                            ->  Bitmap Index Scan on ix_sagas_status_updated_at
                      ->  Seq Scan on outbox  Filter: (published_at IS NULL)

    Completed sagas (the bulk of the table) are never read. The outbox side is a
    scan only because the outbox is empty here; with rows it probes ix_outbox_saga_id.
    """
    now = datetime.now(UTC)
    with engine.begin() as c:
        c.execute(
            text(
                "insert into sagas (id, name, version, status, current, input, data, "
                "created_at, updated_at) select 's-' || g, 'order-payment', 1, "
                "case when g % 100 = 0 then 'running' else 'completed' end, 0, '{}', '{}', "
                "now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval "
                "from generate_series(1, 20000) g"
            )
        )
        c.execute(text("analyze sagas"))
        c.execute(text("analyze outbox"))
        query = idle_sagas_query(now - timedelta(minutes=5), 500)
        compiled = query.compile(c, compile_kwargs={"literal_binds": True})
        plan = "\n".join(r[0] for r in c.execute(text(f"explain {compiled}")))
    assert "ix_sagas_status_updated_at" in plan, plan
    assert "Seq Scan on sagas" not in plan, plan


def test_recent_progress_is_not_swept(orch: Orchestrator, engine: Engine) -> None:
    saga_id = orch.enqueue(NAME, PAYMENT).saga_id
    lose_messages(engine, saga_id)
    idle_for(engine, saga_id, 60)  # past the 30s step timeout, within timeout + grace
    s = Sweeper(orch.uow_factory, orch.registry, replace(SweepConfig(), grace=120))
    assert s.sweep().redriven == []
