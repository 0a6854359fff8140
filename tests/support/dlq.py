"""The saga CLI's dlq commands run as an operator would, and dead letters made for them."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

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
PAYMENT = {"order_id": "o", "customer_id": "c", "amount_cents": 5, "currency": "EUR"}
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "SAGA_DATABASE_URL": settings.database_url,
        "SAGA_BROKER_URL": settings.broker_url,
        "SAGA_STEP_QUEUE": settings.step_queue,
        "SAGA_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "SAGA_LOG_LEVEL": "INFO",
        "SAGA_LOG_FORMAT": "json",
    }


def saga_cli(args: list[str], settings: Settings, code: int = 0, stdin: str | None = None) -> Any:
    # The commands point logging at the runner's stderr, which is closed after;
    # the relay thread of the test keeps logging.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = runner.invoke(app, args, env=cli_env(settings), input=stdin)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert result.exit_code == code, (args, result.output)
    return result


def saga_cli_json(args: list[str], settings: Settings) -> Any:
    return json.loads(saga_cli([*args, "--json"], settings).stdout)


def dead_letter(
    settings: Settings,
    body: bytes,
    headers: dict[str, Any],
    *,
    reason: str,
    message_id: str | None = None,
    content_type: str = "application/json",
) -> None:
    """Put a message in the DLQ as a worker would: original body and headers plus the reason."""
    topology = Topology.from_settings(settings)
    dl_headers = {
        **headers,
        DLQ_REASON: reason,
        DLQ_ERROR: "MalformedMessage",
        DLQ_AT: datetime.now(UTC).isoformat(),
        DLQ_ROUTING_KEY: settings.step_queue,
        DLQ_WORKER: "worker-test",
    }
    with Connection(settings.broker_url) as connection:
        topology.declare_kombu(connection)
        Producer(connection.default_channel).publish(
            body,
            exchange=topology.kombu_dead_letter_exchange(),
            routing_key=topology.dead_letter_routing_key,
            headers=dl_headers,
            content_type=content_type,
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=message_id,
        )


def step_message_body(saga_id: str, **fields: Any) -> tuple[bytes, dict[str, Any], str]:
    body = step_body(saga_id, **fields)
    task = step_task_message(PendingMessage(0, body["message_id"], saga_id, body))
    return task.body, task.headers, task.task_id
