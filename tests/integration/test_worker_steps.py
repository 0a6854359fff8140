"""Real Celery workers run relay-published sagas on PostgreSQL and RabbitMQ."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from saga.adapters.rabbitmq import AmqpPublisher, Topology
from saga.adapters.sql import create_engine
from saga.adapters.sql.tables import outbox
from saga.config import Settings
from saga.core.state import SagaStatus
from saga.examples.order_payment import NAME, effects
from saga.ports.broker import PendingMessage
from tests.support.rabbitmq import queue_depth
from tests.support.waiting import wait_for
from tests.support.workers import celery_worker, orchestrator, relay_thread

COMPLETED_EFFECTS = ["reserve", "payment", "confirm", "notify"]


def payment(i: int, simulate: str = "none") -> dict[str, object]:
    return {
        "order_id": f"order-{i}",
        "customer_id": f"customer-{i}",
        "amount_cents": 1000 + i,
        "currency": "EUR",
        "simulate": simulate,
    }


def duplicates(log: Path) -> int:
    # The worker's line for a message it acked without running anything.
    return sum(1 for line in log.read_text().splitlines() if "] skipped: duplicate" in line)


def test_worker_runs_relayed_sagas_to_the_end_and_drops_redelivered_duplicates(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    settings = replace(broker_settings, database_url=pg_url)
    engine = create_engine(settings)
    log = tmp_path / "worker.log"
    orch = orchestrator(engine, settings)
    happy = [orch.enqueue(NAME, payment(i)).saga_id for i in range(12)]
    declined = [orch.enqueue(NAME, payment(100 + i, "decline_payment")).saga_id for i in range(3)]

    def status(saga_id: str) -> SagaStatus:
        return orch.get(saga_id)[0].state.status

    def all_terminal() -> bool:
        return all(status(s).terminal for s in happy + declined)

    try:
        with relay_thread(settings, engine), celery_worker(settings, log) as worker:
            wait_for(all_terminal, timeout=120, what="every saga to finish", log=log)
            assert {status(s) for s in happy} == {SagaStatus.COMPLETED}
            assert {status(s) for s in declined} == {SagaStatus.COMPENSATED}

            # Publish every step message again, as a relay killed before marking
            # would: the inbox must turn each into a no-op.
            with engine.connect() as connection:
                rows = [
                    PendingMessage(r.id, r.message_id, r.saga_id, r.body)
                    for r in connection.execute(select(outbox).order_by(outbox.c.id))
                ]
            publisher = AmqpPublisher(settings.broker_url, Topology.from_settings(settings))
            try:
                publisher.publish_batch(rows)
            finally:
                publisher.close()
            wait_for(
                lambda: duplicates(log) == len(rows),
                timeout=60,
                what="every republished message to be dropped as a duplicate",
                log=log,
            )
            assert worker.poll() is None
        assert queue_depth(settings.broker_url, settings.step_queue) == 0
        with Session(engine) as session:
            for saga_id in happy:
                assert effects(session, saga_id) == COMPLETED_EFFECTS
            for saga_id in declined:
                assert effects(session, saga_id) == ["reserve", "release"]
        assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 0
    finally:
        engine.dispose()
