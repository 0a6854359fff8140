"""`saga beat` publishes the sweep on schedule and a real `saga worker` runs it: a saga
whose message was lost (outbox row deleted, an hour idle) completes with no one's help."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, update

from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import outbox, sagas
from saga.app.orchestrator import Orchestrator
from saga.app.sweeper import REDRIVE
from saga.config import Settings
from saga.core.definitions import Registry
from saga.core.state import SagaStatus
from saga.examples import order_payment
from tests.support.processes import Processes
from tests.support.waiting import wait_for


def test_beat_schedules_the_sweep_and_a_worker_redrives_a_lost_saga(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    settings = replace(
        broker_settings,
        database_url=pg_url,
        sweep_interval=1.0,
        sweep_grace=1.0,
        beat_schedule_file=str(tmp_path / "beat.schedule"),
    )
    engine = create_engine(settings)
    orch = Orchestrator(order_payment.register(Registry()), SqlUnitOfWorkFactory(engine))
    saga_id = orch.enqueue(
        order_payment.NAME,
        {"order_id": "o-b", "customer_id": "c", "amount_cents": 9, "currency": "EUR"},
    ).saga_id
    with engine.begin() as c:
        c.execute(delete(outbox).where(outbox.c.saga_id == saga_id))
        c.execute(
            update(sagas)
            .where(sagas.c.id == saga_id)
            .values(updated_at=datetime.now(UTC) - timedelta(hours=1))
        )
    with Processes(tmp_path / "logs") as procs:
        relay = procs.relay(settings)
        worker = procs.worker(settings, concurrency=1)
        beat = procs.spawn("beat", ["saga", "beat"], settings)
        wait_for(
            lambda: orch.get(saga_id)[0].state.status is SagaStatus.COMPLETED,
            timeout=90,
            what="the lost saga to be swept and completed",
            report=procs.report,
            alive=[relay, worker, beat],
        )
    history = orch.get(saga_id)[1]
    assert [h.kind for h in history].count(REDRIVE) == 1
