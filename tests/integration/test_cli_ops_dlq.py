"""`saga dlq list|show|replay|drop` on a real RabbitMQ (a per-test DLQ) and PostgreSQL.

Poison messages are dead-lettered by a real worker; a good message is replayed
and run by it. Reading the queue must never lose, reorder or wear out a message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from saga.adapters.rabbitmq import step_task_message
from saga.adapters.rabbitmq.topology import (
    DLQ_REASON,
)
from saga.adapters.sql import create_engine
from saga.adapters.sql.tables import outbox
from saga.config import Settings
from saga.core.state import SagaStatus
from saga.entrypoints.cli.main import app
from saga.examples.order_payment import NAME
from saga.ports.broker import PendingMessage
from tests.support.broker_messages import poison_cases, publish_to_step_queue
from tests.support.dlq import (
    PAYMENT,
    cli_env,
    dead_letter,
    saga_cli,
    saga_cli_json,
    step_message_body,
)
from tests.support.rabbitmq import drain, queue_depth
from tests.support.waiting import wait_for
from tests.support.workers import celery_worker, orchestrator, relay_thread

runner = CliRunner()


@pytest.fixture
def settings(broker_settings: Settings, pg_url: str) -> Settings:
    return replace(broker_settings, database_url=pg_url)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_engine(settings)
    yield engine
    engine.dispose()


def test_list_and_show_leave_every_message_in_place_in_order_and_mask_secrets(
    settings: Settings,
) -> None:
    saga_ids = [str(uuid.uuid4()) for _ in range(4)]
    ids = []
    for i, saga_id in enumerate(saga_ids):
        body, headers, task_id = step_message_body(saga_id, step=f"step-{i}", attempt=i + 1)
        dead_letter(settings, body, headers, reason=f"reason {i}", message_id=task_id)
        ids.append(task_id)
    secret = json.dumps(
        {
            "password": "hunter2",
            "note": "from amqp://svc:s3cr3t@rabbit:5672// token=abc123",
            "nested": [{"api_key": "k-999"}],
        }
    ).encode()
    dead_letter(
        settings,
        secret,
        {"authorization": "Bearer xyz", "x-app": "billing"},
        reason="not a Celery task message",
        message_id="secret-1",
    )
    dead_letter(
        settings,
        b"\xff\xfe binary",
        {},
        reason="cannot decode",
        content_type="application/octet-stream",
    )

    first = saga_cli_json(["dlq", "list"], settings)
    assert [m["message_id"] for m in first] == [*ids, "secret-1", None]
    assert [m["position"] for m in first] == [1, 2, 3, 4, 5, 6]
    top = first[0]
    assert (top["saga_id"], top["step"], top["attempt"], top["phase"]) == (
        saga_ids[0],
        "step-0",
        1,
        "do",
    )
    assert top["reason"] == "reason 0" and top["error"] == "MalformedMessage"
    assert top["worker"] == "worker-test" and top["at"] and top["replays"] == 0
    assert first[4]["saga_id"] is None and first[5]["reason"] == "cannot decode"

    # Quorum queues count every requeue as a delivery (RabbitMQ < 4.3) and drop a
    # message at the default limit of 20 (4.x): 21 reads must change nothing.
    for _ in range(21):
        assert saga_cli_json(["dlq", "list"], settings) == first
    assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 6

    text = saga_cli(["dlq", "list"], settings).stdout
    assert ids[0] in text and saga_ids[3] in text and "6 message(s)" in text

    shown = saga_cli_json(["dlq", "show", "2"], settings)
    assert shown["message_id"] == ids[1] and shown["step"] == "step-1"
    assert shown["headers"][DLQ_REASON] == "reason 1"
    assert shown["headers"]["task"] == "saga.run_step"
    assert shown["original_routing_key"] == settings.step_queue
    assert shown["body"][0][0]["saga_id"] == saga_ids[1]
    assert shown["properties"]["content_type"] == "application/json"

    masked = saga_cli_json(["dlq", "show", "--id", "secret-1"], settings)
    dumped = json.dumps(masked)
    for leaked in ("hunter2", "s3cr3t", "abc123", "k-999", "Bearer xyz"):
        assert leaked not in dumped, leaked
    assert masked["body"]["password"] == "***" and masked["headers"]["x-app"] == "billing"
    assert "amqp://svc:***@rabbit" in masked["body"]["note"]
    plain = saga_cli(["dlq", "show", "--id", "secret-1"], settings).stdout
    assert "hunter2" not in plain and "billing" in plain

    binary = saga_cli_json(["dlq", "show", "6"], settings)
    assert binary["body"] == "<9 bytes, not text: ff fe 20 62 69 6e 61 72 79>"
    assert binary["body_base64"] == "//4gYmluYXJ5"

    assert "no message at position 9" in saga_cli(["dlq", "show", "9"], settings, code=1).output
    assert saga_cli(["dlq", "show"], settings, code=2).exit_code == 2
    assert saga_cli_json(["dlq", "list"], settings) == first

    # The messages are untouched: same bodies, no delivery count worn down.
    got = drain(settings.broker_url, settings.dead_letter_queue, expect=6)
    assert [m.properties.get("message_id") for m in got] == [*ids, "secret-1", None]
    assert all(not (m.headers or {}).get("x-delivery-count") for m in got)
    raw = got[4].body
    assert (raw if isinstance(raw, bytes) else raw.encode()) == secret


def test_replay_and_drop_with_a_real_worker(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    orch = orchestrator(engine, settings)
    good_saga = orch.enqueue(NAME, PAYMENT).saga_id
    victim = orch.enqueue(NAME, {**PAYMENT, "order_id": "o-2"}).saga_id
    # The good saga's first message was dead-lettered (say its worker ran old
    # definitions): it is in the DLQ, not in the outbox for the relay.
    (good_body,) = [b for b in _pending_bodies(engine) if b["saga_id"] == good_saga]
    with engine.begin() as connection:
        connection.execute(
            update(outbox)
            .where(outbox.c.message_id == good_body["message_id"])
            .values(published_at=datetime.now(UTC))
        )
    task = step_task_message(PendingMessage(0, good_body["message_id"], good_saga, good_body))
    dead_letter(
        settings,
        task.body,
        task.headers,
        reason="saga 'order-payment' v1 has no step 'reserve_funds'",
        message_id=task.task_id,
    )

    cases = poison_cases(victim)
    log = tmp_path / "worker.log"
    with celery_worker(settings, log), relay_thread(settings, engine):
        publish_to_step_queue(settings, [cases["unknown-step"][0], cases["not-json"][0]])

        def depth() -> int:
            return queue_depth(settings.broker_url, settings.dead_letter_queue)

        wait_for(lambda: depth() == 3, timeout=60, what="two poison messages", log=log)

        listed = saga_cli_json(["dlq", "list"], settings)
        assert listed[0]["message_id"] == task.task_id and listed[0]["saga_id"] == good_saga
        by_reason = {m["error"]: m for m in listed[1:]}
        assert set(by_reason) == {"MalformedMessage", "DecodeError"}
        unknown_step = by_reason["MalformedMessage"]
        assert "no step 'unknown-step'" in unknown_step["reason"]
        assert (unknown_step["saga_id"], unknown_step["step"]) == (victim, "unknown-step")
        assert unknown_step["worker"] and unknown_step["at"]
        assert "not JSON" in by_reason["DecodeError"]["reason"]

        # The good message, replayed, runs the saga to its end.
        result = saga_cli_json(
            ["dlq", "replay", "--id", task.task_id, "--why", "definitions deployed"], settings
        )
        assert [m["message_id"] for m in result["messages"]] == [task.task_id]
        assert result["left_in_queue"] == 2
        wait_for(
            lambda: orch.get(good_saga)[0].state.status.terminal,
            timeout=60,
            what="the replayed saga to finish",
            log=log,
        )
        record, history = orch.get(good_saga)
        assert record.state.status is SagaStatus.COMPLETED
        replayed = next(h for h in history if h.kind == "dead letter replayed")
        assert replayed.detail["why"] == "definitions deployed"
        assert replayed.detail["message_id"] == task.task_id and replayed.actor

        # Messages that are still poison come back, each with its reason.
        run = saga_cli(["dlq", "replay", "--all", "--why", "try again"], settings)
        assert "2 message(s) replayed" in run.stdout
        assert "dead letter replayed" in run.stderr  # the structured log lines
        wait_for(lambda: depth() == 2, timeout=60, what="the poison to come back", log=log)
        back = {m["error"]: m for m in saga_cli_json(["dlq", "list"], settings)}
        assert set(back) == {"DecodeError", "MalformedMessage"}
        assert "no step 'unknown-step'" in back["MalformedMessage"]["reason"]
        assert back["MalformedMessage"]["saga_id"] == victim
        # Screened by the worker's consumer or judged inside the task, each keeps
        # its replay count.
        assert back["DecodeError"]["replays"] == 1
        assert back["MalformedMessage"]["replays"] == 1

    # Drop asks first; "no" drops nothing.
    refused = saga_cli(["dlq", "drop", "--all", "--why", "cleanup"], settings, code=1, stdin="n\n")
    assert "nothing dropped" in refused.output
    assert depth() == 2
    assert saga_cli(["dlq", "drop", "--why", "x"], settings, code=2).exit_code == 2
    missing = saga_cli(["dlq", "drop", "7", "--yes", "--why", "x"], settings, code=1)
    assert "not in" in missing.output and depth() == 2

    dropped = saga_cli_json(
        ["dlq", "drop", "--saga", victim, "--yes", "--why", "forged step"], settings
    )
    assert [m["saga_id"] for m in dropped["messages"]] == [victim]
    _, history = orch.get(victim)
    entry = next(h for h in history if h.kind == "dead letter dropped")
    assert entry.detail["why"] == "forged step" and entry.detail["step"] == "unknown-step"

    everything = saga_cli(
        ["dlq", "drop", "--all", "--why", "not JSON, nobody's"], settings, stdin="y\n"
    )
    assert "1 message(s) dropped" in everything.stdout
    assert depth() == 0
    assert saga_cli_json(["dlq", "list"], settings) == []


def _pending_bodies(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(outbox.select().where(outbox.c.published_at.is_(None)))
        return [r.body for r in rows]


def test_dlq_commands_say_what_to_do_without_rabbitmq(settings: Settings) -> None:
    embedded = replace(settings, broker_url="embedded+sqlite:///broker.sqlite3")
    result = runner.invoke(app, ["dlq", "list"], env=cli_env(embedded))
    assert result.exit_code == 2 and "need RabbitMQ" in result.output
    down = replace(settings, broker_url="amqp://guest:secret@127.0.0.1:1//")
    result = runner.invoke(app, ["dlq", "list", "--json"], env=cli_env(down))
    assert result.exit_code == 2 and "cannot reach RabbitMQ" in result.output
    assert "secret" not in result.output
