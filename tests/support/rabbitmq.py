"""Pytest plugin: the real RabbitMQ, with per-test queues.

RabbitMQ is expected at 127.0.0.1:5672, guest/guest (see DESIGN.md);
SAGA_TEST_AMQP_URL points elsewhere. If it does not answer, every test that needs
it FAILS with the command that starts it: a missing service is a failure, never
a skip.

Fixtures:
    rabbitmq_url     the broker URL, checked once per session
    broker_settings  Settings with a unique step queue and dead-letter queue for
                     this test; both queues and their exchanges are deleted after

Helpers: `drain(url, queue, ...)` takes messages off a queue, `queue_depth(url, queue)`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection
from kombu.message import Message

from saga.config import Settings

AMQP_URL = os.environ.get("SAGA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
START_COMMAND = "rabbitmq-server -detached"


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    try:
        with Connection(AMQP_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.fail(
            f"RabbitMQ is not reachable at {AMQP_URL} ({exc!r}).\nStart it with:  {START_COMMAND}",
            pytrace=False,
        )
    return AMQP_URL


@pytest.fixture
def broker_settings(rabbitmq_url: str) -> Iterator[Settings]:
    prefix = f"test.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    settings = Settings(
        broker_url=rabbitmq_url,
        step_queue=f"{prefix}.steps",
        dead_letter_queue=f"{prefix}.dead-letter",
    )
    yield settings
    delete_topology(rabbitmq_url, settings)


def delete_queue(url: str, name: str) -> None:
    """Delete a test's own extra queue (and the exchange of that name, if any)."""
    with Connection(url) as connection:
        for delete in ("queue_delete", "exchange_delete"):
            channel = connection.channel()
            try:
                getattr(channel, delete)(name)
            finally:
                channel.close()


def delete_topology(url: str, settings: Settings) -> None:
    # The chain queue a process set derives from the step queue (saga up) or is given.
    chain = {f"{settings.step_queue}.chain", settings.chain_queue} - {""}
    with Connection(url) as connection:
        for name in (settings.step_queue, settings.dead_letter_queue, *sorted(chain)):
            channel = connection.channel()
            try:
                channel.queue_delete(name)
            finally:
                channel.close()
            channel = connection.channel()
            try:
                channel.exchange_delete(name)
            finally:
                channel.close()


def queue_depth(url: str, queue: str) -> int:
    with Connection(url) as connection:
        channel = connection.channel()
        try:
            depth: int = channel.queue_declare(queue, passive=True).message_count
        finally:
            channel.close()
        return depth


def drain(
    url: str, queue: str, *, expect: int | None = None, timeout: float = 10.0
) -> list[Message]:
    """Get (and ack) messages until `expect` arrived, or the queue stays empty.

    Without `expect`, returns once the queue has been empty for half a second.
    """
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    with Connection(url) as connection:
        channel = connection.channel()
        try:
            while time.monotonic() < deadline:
                if expect is not None and len(got) >= expect:
                    break
                raw: Any = channel.basic_get(queue, no_ack=False)
                if raw is None:
                    now = time.monotonic()
                    idle_since = idle_since or now
                    if expect is None and now - idle_since > 0.5:
                        break
                    time.sleep(0.05)
                    continue
                idle_since = None
                message = channel.message_to_python(raw)
                message.ack()
                got.append(message)
        finally:
            channel.close()
    return got


def message_id_of(message: Message) -> str:
    headers = message.headers or {}
    return str(headers.get("id"))
