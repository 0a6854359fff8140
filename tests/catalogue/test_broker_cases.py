"""Catalogue: bad messages on the broker, through a real Celery worker on RabbitMQ.

The poison cases of tests/integration/test_dlq_poison.py (not JSON, wrong schema,
unknown saga, unknown version, unknown step, unknown task, no headers, forged id)
are listed in tests/catalogue/README.md, not repeated; these are the others. One
worker takes them all, so the test also shows it survives the lot.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from saga.adapters.rabbitmq.topology import DLQ_ERROR, DLQ_REASON
from saga.adapters.sql import create_engine
from saga.adapters.sql.tables import inbox, outbox, saga_history, sagas
from saga.config import Settings
from saga.core.state import SagaStatus
from saga.examples.order_payment import NAME
from tests.support.broker_messages import publish_to_step_queue, task_headers, v2_body
from tests.support.outbox import step_body
from tests.support.rabbitmq import drain, queue_depth
from tests.support.waiting import wait_for
from tests.support.workers import celery_worker, orchestrator, relay_thread


def cases(victim: str) -> dict[str, tuple[dict[str, Any], str, str]]:
    """case -> (publish arguments, a piece of the expected reason, expected error kind)."""
    out: dict[str, tuple[dict[str, Any], str, str]] = {}
    ghost = step_body(str(uuid.uuid4()))
    out["saga-does-not-exist"] = (
        {"body": v2_body(ghost), "headers": task_headers(ghost["message_id"])},
        "no saga with id",
        "MalformedMessage",
    )
    mid = str(uuid.uuid4())
    # A Celery builtin: registered in every app, never a saga task.
    out["forged-builtin-task"] = (
        {
            "body": json.dumps([[[], 0], {}, None]).encode(),
            "headers": task_headers(mid, task="celery.accumulate"),
        },
        "not a saga task",
        "UnknownTask",
    )
    bad = step_body(victim, step="invalid-utf8")
    raw = v2_body(bad).replace(b"invalid-utf8", b"invalid-\xff\xfe")
    out["invalid-utf8"] = (
        {"body": raw, "headers": task_headers(bad["message_id"])},
        "not JSON",
        "DecodeError",
    )
    zero = step_body(victim, step="reserve_funds", attempt=0)
    out["attempt-zero"] = (
        {"body": v2_body(zero), "headers": task_headers(zero["message_id"])},
        "must be positive",
        "MalformedMessage",
    )
    typed = step_body(victim, step="reserve_funds", version="1")
    out["version-as-string"] = (
        {"body": v2_body(typed), "headers": task_headers(typed["message_id"])},
        "'version' must be int",
        "MalformedMessage",
    )
    callbacks = step_body(victim, step="reserve_funds")
    out["smuggled-callback"] = (
        {
            "body": json.dumps(
                [[callbacks], {}, {"callbacks": [{"task": "celery.accumulate"}]}]
            ).encode(),
            "headers": task_headers(callbacks["message_id"]),
        },
        "callbacks",
        "MalformedMessage",
    )
    mid = str(uuid.uuid4())
    out["task-header-not-a-string"] = (
        {"body": v2_body({}), "headers": {**task_headers(mid), "task": ["saga.step"]}},
        "unknown task",
        "UnknownTask",
    )
    return out


def test_bad_broker_messages_are_dead_lettered_with_their_reason(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    """Cases: a message for a saga that does not exist; forged headers (a Celery builtin
    task, a non-string task name, callbacks smuggled into the body); invalid UTF-8 in
    the body; wrong types and values in a step message (attempt 0, version as a string).
    Each lands in the DLQ with its reason; nothing is stored; the worker keeps running."""
    settings = replace(broker_settings, database_url=pg_url)
    engine = create_engine(settings)
    log = tmp_path / "worker.log"
    orch = orchestrator(engine, settings)
    try:
        victim = orch.enqueue(
            NAME, {"order_id": "o", "customer_id": "c", "amount_cents": 5, "currency": "EUR"}
        ).saga_id
        with engine.connect() as c:
            history_before = c.execute(select(func.count()).select_from(saga_history)).scalar()
        bad = cases(victim)
        with celery_worker(settings, log) as worker:
            publish_to_step_queue(settings, [publish for publish, _, _ in bad.values()])
            wait_for(
                lambda: queue_depth(settings.broker_url, settings.dead_letter_queue) == len(bad),
                timeout=60,
                what="every bad message in the dead-letter queue",
                log=log,
            )
            dead = drain(settings.broker_url, settings.dead_letter_queue, expect=len(bad))
            # Nothing the bad messages named was stored or started.
            with engine.connect() as c:
                assert c.execute(select(func.count()).select_from(sagas)).scalar() == 1
                assert c.execute(select(func.count()).select_from(inbox)).scalar() == 0
                assert c.execute(select(func.count()).select_from(outbox)).scalar() == 1
                assert (
                    c.execute(select(func.count()).select_from(saga_history)).scalar()
                    == history_before
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

        assert len(dead) == len(bad)
        reasons = {}
        for message in dead:
            raw = message.body if isinstance(message.body, bytes) else message.body.encode()
            matched = [name for name, (args, _, _) in bad.items() if args["body"] == raw]
            assert len(matched) == 1, raw
            reasons[matched[0]] = (message.headers[DLQ_REASON], message.headers[DLQ_ERROR])
        for name, (_, reason, error) in bad.items():
            assert reason in reasons[name][0], (name, reasons[name])
            assert reasons[name][1] == error, (name, reasons[name])
        assert "celery.accumulate" in reasons["forged-builtin-task"][0]
    finally:
        engine.dispose()
