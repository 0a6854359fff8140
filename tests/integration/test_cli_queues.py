"""`saga queues` on a real RabbitMQ (per-test queues): depth and consumers of the step
queue and the dead-letter queue, read with a passive declare that creates nothing."""

from __future__ import annotations

import json
from typing import Any

import amqp.exceptions
import pytest
from kombu import Connection, Producer
from typer.testing import CliRunner

from saga.adapters.rabbitmq import Topology
from saga.config import Settings
from saga.entrypoints.cli.main import app

runner = CliRunner()


def _env(settings: Settings, **more: str) -> dict[str, str]:
    return {
        "SAGA_BROKER_URL": settings.broker_url,
        "SAGA_STEP_QUEUE": settings.step_queue,
        "SAGA_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "SAGA_LOG_LEVEL": "WARNING",
        **more,
    }


def _queues(env: dict[str, str], *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["queues", *args], env=env)
    assert result.exit_code == code, result.output
    return result


def _by_role(output: str) -> dict[str, dict[str, Any]]:
    return {q["role"]: q for q in json.loads(output)}


def _publish(connection: Connection, queue: str, n: int) -> None:
    producer = Producer(connection.default_channel)
    for i in range(n):
        producer.publish(
            {"n": i}, exchange="", routing_key=queue, delivery_mode=2, serializer="json"
        )


def _exists(url: str, queue: str) -> bool:
    with Connection(url) as connection:
        channel = connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
            return True
        except amqp.exceptions.NotFound:
            return False
        finally:
            if channel.is_open:
                channel.close()


def test_queues_reports_depth_and_consumers_of_both_queues(broker_settings: Settings) -> None:
    s = broker_settings
    env = _env(s)
    topology = Topology.from_settings(s)
    with Connection(s.broker_url) as connection:
        topology.declare_kombu(connection)
        _publish(connection, s.step_queue, 3)
        _publish(connection, s.dead_letter_queue, 2)

        idle = _by_role(_queues(env, "--json").stdout)
        assert idle["steps"] == {
            "role": "steps",
            "queue": s.step_queue,
            "setting": "SAGA_STEP_QUEUE",
            "exists": True,
            "messages": 3,
            "consumers": 0,
        }
        assert idle["dead-letter"]["queue"] == s.dead_letter_queue
        assert (idle["dead-letter"]["messages"], idle["dead-letter"]["consumers"]) == (2, 0)

        # A consumer with prefetch 1, as a worker process: one consumer, and the
        # message it holds unacknowledged is no longer counted as ready.
        channel = connection.channel()
        try:
            channel.basic_qos(0, 1, False)
            held: list[Any] = []
            channel.basic_consume(s.step_queue, callback=held.append)
            while not held:
                connection.drain_events(timeout=5)
            busy = _by_role(_queues(env, "--json").stdout)
            assert (busy["steps"]["messages"], busy["steps"]["consumers"]) == (2, 1)
            assert (busy["dead-letter"]["messages"], busy["dead-letter"]["consumers"]) == (2, 0)

            table = _queues(env).stdout
            assert s.step_queue in table and s.dead_letter_queue in table
            assert "see `saga dlq list`" in table
        finally:
            channel.close()

    # With the consumer gone the held message is ready again; reading consumed nothing.
    after = _by_role(_queues(env, "--json").stdout)
    assert (after["steps"]["messages"], after["steps"]["consumers"]) == (3, 0)
    assert "no worker consumes it" in _queues(env).stdout


def test_queues_reports_a_missing_queue_without_creating_it(broker_settings: Settings) -> None:
    s = broker_settings
    env = _env(s)
    result = _queues(env, "--json", code=1)
    rows = _by_role(result.stdout)
    assert rows["steps"]["exists"] is False and rows["steps"]["messages"] is None
    assert rows["dead-letter"]["exists"] is False
    assert "no such queue" in result.stderr
    assert f"{s.step_queue} (SAGA_STEP_QUEUE)" in result.stderr
    assert "`saga relay`" in result.stderr
    assert not _exists(s.broker_url, s.step_queue)
    assert not _exists(s.broker_url, s.dead_letter_queue)

    # One queue present, the other not: both rows, exit 1 naming the missing one.
    with Connection(s.broker_url) as connection:
        channel = connection.channel()
        try:
            Topology.from_settings(s).kombu_dead_letter_queue().bind(channel).declare()
        finally:
            channel.close()
    partly = _queues(env, code=1)
    assert "does not exist" in partly.stdout
    assert f"{s.dead_letter_queue} (SAGA_DEAD_LETTER_QUEUE)" not in partly.stderr
    assert f"{s.step_queue} (SAGA_STEP_QUEUE)" in partly.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("embedded+sqlite:///x.sqlite3", "asks RabbitMQ"),
        ("amqp://guest:secret@127.0.0.1:1//", "cannot reach RabbitMQ"),
    ],
)
def test_queues_says_what_to_fix_when_there_is_no_rabbitmq(
    broker_settings: Settings, url: str, expected: str
) -> None:
    result = _queues(_env(broker_settings, SAGA_BROKER_URL=url), code=2)
    assert expected in result.output
    assert "SAGA_BROKER_URL" in result.output
    assert "secret" not in result.output


def test_queues_says_a_consumer_is_a_worker_command_not_a_process() -> None:
    """RabbitMQ counts one consumer per `saga worker` (a Celery node), whatever its
    -c: the child processes share the node's consumer and prefetch."""
    text = " ".join(runner.invoke(app, ["queues", "--help"]).stdout.split())
    assert "one per `saga worker` command" in text
    assert "are worker processes" not in text
