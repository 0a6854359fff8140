"""The database goes away under a worker: messages wait, none is dead-lettered or lost."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from saga.adapters.sql import create_engine
from saga.config import Settings
from saga.core.state import SagaStatus
from saga.examples.order_payment import NAME, effects
from tests.support.rabbitmq import queue_depth
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for
from tests.support.workers import celery_worker, orchestrator, relay_thread


@pytest.mark.fault
def test_steps_wait_out_a_database_outage_and_are_never_dead_lettered(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    settings = replace(broker_settings, database_url=pg_url)
    engine = create_engine(settings)
    log = tmp_path / "worker.log"
    orch = orchestrator(engine, settings)
    payment = {"customer_id": "c", "amount_cents": 10, "currency": "EUR"}
    sagas = [orch.enqueue(NAME, {**payment, "order_id": f"o{i}"}).saga_id for i in range(5)]
    url = make_url(pg_url)
    try:
        with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
            # Only the worker reaches the database through the proxy.
            worker_db = url.set(port=proxy.port).render_as_string(hide_password=False)
            proxy.stop()
            worker_settings = replace(settings, database_url=worker_db)
            with relay_thread(settings, engine), celery_worker(worker_settings, log) as worker:
                wait_for(
                    lambda: log.read_text().count("store unavailable") >= 10,
                    timeout=60,
                    what="the worker to hit the outage",
                    log=log,
                )
                time.sleep(3)
                assert {orch.get(s)[0].state.status for s in sagas} == {SagaStatus.RUNNING}
                assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 0
                proxy.start()
                wait_for(
                    lambda: all(orch.get(s)[0].state.status.terminal for s in sagas),
                    timeout=120,
                    what="every saga to finish after the outage",
                    log=log,
                )
                assert worker.poll() is None
        assert {orch.get(s)[0].state.status for s in sagas} == {SagaStatus.COMPLETED}
        assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 0
        with Session(engine) as session:
            for saga_id in sagas:
                assert effects(session, saga_id) == ["reserve", "payment", "confirm", "notify"]
    finally:
        engine.dispose()
