"""`saga dlq list --saga ID` on a real RabbitMQ (a per-test DLQ): only that saga's
messages, at their positions in the whole queue, the queue left as it was, and the
same messages `saga dlq drop --saga ID` takes."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from kombu import Connection, Producer
from typer.testing import CliRunner

from saga.adapters.rabbitmq import Topology, step_task_message
from saga.adapters.rabbitmq.topology import (
    DLQ_AT,
    DLQ_ERROR,
    DLQ_REASON,
    DLQ_ROUTING_KEY,
    DLQ_WORKER,
)
from saga.config import Settings
from saga.entrypoints.cli.main import app
from saga.ports.broker import PendingMessage
from tests.support.outbox import step_body

runner = CliRunner()


@pytest.fixture
def settings(broker_settings: Settings, pg_url: str) -> Settings:
    return replace(broker_settings, database_url=pg_url)


def _env(s: Settings) -> dict[str, str]:
    return {
        "SAGA_DATABASE_URL": s.database_url,
        "SAGA_BROKER_URL": s.broker_url,
        "SAGA_STEP_QUEUE": s.step_queue,
        "SAGA_DEAD_LETTER_QUEUE": s.dead_letter_queue,
        "SAGA_LOG_LEVEL": "WARNING",
    }


def _saga(s: Settings, *args: str, code: int = 0) -> Any:
    # Commands that record point logging at the runner's stderr, closed afterwards.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = runner.invoke(app, list(args), env=_env(s))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert result.exit_code == code, (args, result.output)
    return result


def _json(s: Settings, *args: str) -> Any:
    return json.loads(_saga(s, *args, "--json").stdout)


def _dead_letter(s: Settings, body: bytes, headers: dict[str, Any], message_id: str) -> None:
    """Into the DLQ as a worker puts a poison message: original body and headers + reason."""
    topology = Topology.from_settings(s)
    with Connection(s.broker_url) as connection:
        topology.declare_kombu(connection)
        Producer(connection.default_channel).publish(
            body,
            exchange=topology.kombu_dead_letter_exchange(),
            routing_key=topology.dead_letter_routing_key,
            headers={
                **headers,
                DLQ_REASON: f"test reason for {message_id}",
                DLQ_ERROR: "UnknownStep",
                DLQ_AT: datetime.now(UTC).isoformat(),
                DLQ_ROUTING_KEY: s.step_queue,
                DLQ_WORKER: "worker-test",
            },
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=message_id,
        )


def _step(s: Settings, saga_id: str, step: str) -> str:
    body = step_body(saga_id, step=step)
    task = step_task_message(PendingMessage(0, body["message_id"], saga_id, body))
    _dead_letter(s, task.body, task.headers, task.task_id)
    return task.task_id


def test_list_filters_by_saga_keeps_positions_and_leaves_the_queue_alone(
    settings: Settings,
) -> None:
    s = settings
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    a1 = _step(s, a, "reserve_funds")
    b1 = _step(s, b, "reserve_funds")
    # Undecodable, but its headers name saga A (Celery's argsrepr): not A's message
    # for the filter, as for replay and drop, which go by the body.
    undecodable = str(uuid.uuid4())
    _dead_letter(s, b"\xff\xfe not json", {"argsrepr": f"saga_id={a}"}, undecodable)
    a2 = _step(s, a, "notify")
    c1 = _step(s, c, "reserve_funds")
    everything = [a1, b1, undecodable, a2, c1]
    assert [m["message_id"] for m in _json(s, "dlq", "list")] == everything

    only_a = _json(s, "dlq", "list", "--saga", a)
    assert [(m["position"], m["message_id"]) for m in only_a] == [(1, a1), (4, a2)]
    assert {m["saga_id"] for m in only_a} == {a}
    assert [m["step"] for m in only_a] == ["reserve_funds", "notify"]
    assert [m["message_id"] for m in _json(s, "dlq", "list", "--saga", c)] == [c1]
    assert _json(s, "dlq", "list", "--saga", str(uuid.uuid4())) == []

    text = _saga(s, "dlq", "list", "--saga", a).stdout
    assert f"#1 {a1}" in text and f"#4 {a2}" in text
    assert b1 not in text and undecodable not in text and c1 not in text
    assert f"2 of 5 message(s) in {s.dead_letter_queue} are for saga {a}" in text
    limited = _saga(s, "dlq", "list", "--saga", a, "--limit", "1").stdout
    assert a1 in limited and a2 not in limited and "(showing 1)" in limited
    none = _saga(s, "dlq", "list", "--saga", "no-such-saga").stdout
    assert "0 of 5 message(s)" in none

    # The positions are the whole queue's: `saga dlq show` finds the same message.
    assert _json(s, "dlq", "show", "4")["message_id"] == a2
    # Reading filtered moved nothing.
    assert [m["message_id"] for m in _json(s, "dlq", "list")] == everything

    # What list --saga shows is what drop --saga takes.
    dropped = _json(s, "dlq", "drop", "--saga", a, "--why", "test: forged", "--yes")
    assert [m["message_id"] for m in dropped["messages"]] == [a1, a2]
    assert [m["message_id"] for m in _json(s, "dlq", "list")] == [b1, undecodable, c1]
    assert _json(s, "dlq", "list", "--saga", a) == []
