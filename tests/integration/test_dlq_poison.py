"""Poison messages go to the dead-letter queue with their reason; the worker carries on."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kombu import Connection, Producer
from sqlalchemy import func, select

from saga.broker import STEP_TASK, Topology
from saga.broker.topology import DLQ_AT, DLQ_ERROR, DLQ_REASON, DLQ_ROUTING_KEY
from saga.config import Settings
from saga.core.state import SagaStatus
from saga.examples.order_payment import NAME
from saga.store import create_engine
from saga.store.tables import inbox
from tests.support.outbox import step_body
from tests.support.rabbitmq import drain, queue_depth
from tests.support.workers import celery_worker, orchestrator, relay_thread, wait_until

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_headers(task_id: str, task: str = STEP_TASK) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0}


def v2_body(*args: Any) -> bytes:
    return json.dumps([list(args), {}, EMBED]).encode()


def publish_to_step_queue(settings: Settings, messages: Iterable[Mapping[str, Any]]) -> None:
    """Publish each {"body": bytes, "headers": dict} onto the step queue as given,
    bypassing the product's publishers (which would never send such messages)."""
    topology = Topology.from_settings(settings)
    with Connection(settings.broker_url) as connection:
        topology.declare_kombu(connection)
        producer = Producer(connection.default_channel)
        for message in messages:
            producer.publish(
                message["body"],
                exchange=topology.kombu_step_exchange(),
                routing_key=topology.step_routing_key,
                headers=message["headers"],
                content_type="application/json",
                content_encoding="utf-8",
            )


def poison_cases(saga_id: str) -> dict[str, tuple[dict[str, Any], str]]:
    """case -> (publish arguments, a piece of the expected reason)."""

    def step(case: str, **fields: Any) -> tuple[dict[str, Any], str]:
        body = step_body(saga_id, **fields)
        return {"body": v2_body(body), "headers": task_headers(body["message_id"])}, case

    cases: dict[str, tuple[dict[str, Any], str]] = {}
    mid = str(uuid.uuid4())
    cases["not-json"] = (
        {"body": b"{not json: not-json", "headers": task_headers(mid)},
        "not JSON",
    )
    mid = str(uuid.uuid4())
    cases["wrong-schema"] = (
        {
            "body": v2_body({"message_id": mid, "case": "wrong-schema"}),
            "headers": task_headers(mid),
        },
        "lacks field(s)",
    )
    args, _ = step("unknown-saga", saga="unknown-saga")
    cases["unknown-saga"] = (args, "'unknown-saga'")
    args, _ = step("unknown-version", version=99)
    cases["unknown-version"] = (args, "v99")
    args, _ = step("unknown-step", step="unknown-step")
    cases["unknown-step"] = (args, "no step 'unknown-step'")
    mid = str(uuid.uuid4())
    cases["unknown-task"] = (
        {"body": v2_body("unknown-task"), "headers": task_headers(mid, task="no.such.task")},
        "unknown task 'no.such.task'",
    )
    cases["no-headers"] = (
        {"body": json.dumps({"case": "no-headers"}).encode(), "headers": {}},
        "no 'task' header",
    )
    body = step_body(saga_id, step="forged-id")
    cases["forged-id"] = (
        {"body": v2_body(body), "headers": task_headers(str(uuid.uuid4()))},
        "does not match",
    )
    return cases


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
            wait_until(
                lambda: queue_depth(settings.broker_url, settings.dead_letter_queue) == len(cases),
                timeout=60,
                what="every poison message in the dead-letter queue",
                log=log,
            )
            # The worker is alive and still runs good messages.
            with relay_thread(settings, engine):
                wait_until(
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
        # Refused messages store nothing: only the good saga's steps are in the inbox.
        with engine.connect() as connection:
            recorded = connection.execute(select(func.count()).select_from(inbox)).scalar_one()
        assert recorded == 4
    finally:
        engine.dispose()
