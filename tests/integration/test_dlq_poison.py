"""Poison messages go to the dead-letter queue with their reason; the worker carries on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from saga.adapters.rabbitmq.topology import DLQ_AT, DLQ_ERROR, DLQ_REASON, DLQ_ROUTING_KEY
from saga.adapters.sql import create_engine
from saga.adapters.sql.tables import inbox, outbox
from saga.config import Settings
from saga.core.state import SagaStatus
from saga.examples.order_payment import NAME
from tests.support.broker_messages import (
    poison_cases,
    publish_to_step_queue,
)
from tests.support.rabbitmq import drain, queue_depth
from tests.support.waiting import wait_for
from tests.support.workers import celery_worker, orchestrator, relay_thread


def test_poison_messages_are_dead_lettered_with_reason_and_the_worker_keeps_going(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    settings = replace(broker_settings, database_url=pg_url)
    engine = create_engine(settings)
    log = tmp_path / "worker.log"
    orch = orchestrator(engine, settings)
    try:
        victim = orch.enqueue(
            NAME,
            {"order_id": "o", "customer_id": "c", "amount_cents": 5, "currency": "EUR"},
        ).saga_id
        cases = poison_cases(victim)
        with celery_worker(settings, log) as worker:
            publish_to_step_queue(settings, [args for args, _ in cases.values()])
            wait_for(
                lambda: queue_depth(settings.broker_url, settings.dead_letter_queue) == len(cases),
                timeout=60,
                what="every poison message in the dead-letter queue",
                log=log,
            )
            # The worker is alive and still runs good messages.
            with relay_thread(settings, engine):
                wait_for(
                    lambda: orch.get(victim)[0].state.status.terminal,
                    timeout=60,
                    what="the good saga to finish",
                    log=log,
                )
            assert orch.get(victim)[0].state.status is SagaStatus.COMPLETED
            assert worker.poll() is None

        dead = drain(settings.broker_url, settings.dead_letter_queue, expect=len(cases))
        assert len(dead) == len(cases)
        by_case: dict[str, Any] = {}
        for message in dead:
            raw = message.body if isinstance(message.body, bytes) else message.body.encode()
            # Dead-lettered byte for byte as published (re-encoded identically by a
            # task for the cases only the orchestrator can judge).
            matched = [c for c, (args, _) in cases.items() if args["body"] == raw]
            assert len(matched) == 1, raw
            by_case[matched[0]] = message
        assert set(by_case) == set(cases)
        for case, (_, reason) in cases.items():
            headers = by_case[case].headers
            assert reason in headers[DLQ_REASON], (case, headers[DLQ_REASON])
            assert headers[DLQ_ERROR]
            assert headers[DLQ_AT]
            assert headers[DLQ_ROUTING_KEY] == settings.step_queue
        assert queue_depth(settings.broker_url, settings.step_queue) == 0
        # Refused messages store nothing: the inbox holds exactly the messages the
        # good saga wrote to its outbox (one when its steps run fused, one per step
        # when they do not), each claimed once.
        with engine.connect() as connection:
            claimed = connection.execute(
                select(inbox.c.saga_id, func.count()).group_by(inbox.c.saga_id)
            ).all()
            written = connection.execute(
                select(func.count()).select_from(outbox).where(outbox.c.saga_id == victim)
            ).scalar_one()
        assert written >= 1
        assert [tuple(row) for row in claimed] == [(victim, written)]
    finally:
        engine.dispose()
