"""Step-queue messages as a broker delivers them, forged ones included: Celery's
headers and body, publishing straight to the step queue, and the poison cases."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from kombu import Connection, Producer

from saga.adapters.rabbitmq import STEP_TASK, Topology
from saga.config import Settings
from tests.support.outbox import step_body

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
