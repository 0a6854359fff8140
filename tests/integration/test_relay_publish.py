"""The relay's publishers and loop against the real RabbitMQ (and PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from kombu import Connection

from saga.adapters.rabbitmq import STEP_TASK, AmqpPublisher, KombuPublisher, PublishFailed, Topology
from saga.adapters.sql import SqlOutboxReader, create_engine
from saga.app.relay import Backoff, run_relay
from saga.config import Settings
from saga.ports.broker import PendingMessage
from tests.support.outbox import add_outbox_rows, outbox_ids_in_order, step_body, unpublished
from tests.support.rabbitmq import drain, message_id_of, queue_depth
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for


def pending(count: int, start: int = 1) -> list[PendingMessage]:
    rows = []
    for i in range(start, start + count):
        saga_id = str(uuid.uuid4())
        body = step_body(saga_id)
        rows.append(PendingMessage(i, body["message_id"], saga_id, body))
    return rows


class ListReader:
    """An OutboxReader over a list: marks only what mark_published names, at claim exit.

    Counts the claims of rows that ended in an error (a publish that failed), the
    evidence that the relay tried while the broker was away.
    """

    def __init__(self, rows: Sequence[PendingMessage]) -> None:
        self.rows = list(rows)
        self.published: set[int] = set()
        self._marking: set[int] = set()
        self.failed_claims = 0

    def claim(self, limit: int) -> Any:
        return self._claim(limit)

    @contextmanager
    def _claim(self, limit: int) -> Iterator[Sequence[PendingMessage]]:
        self._marking = set()
        rows = [r for r in self.rows if r.id not in self.published][:limit]
        try:
            yield rows
        except BaseException:
            if rows:
                self.failed_claims += 1
            raise
        self.published |= self._marking  # "commit"

    def mark_published(self, ids: Sequence[int]) -> None:
        self._marking.update(ids)

    def oldest_unpublished_age(self) -> float | None:
        return None

    def wait_for_rows(self, timeout: float) -> bool:
        time.sleep(timeout)
        return False

    def close(self) -> None:
        """Holds nothing."""


def run_until(
    settings: Settings, reader: Any, publisher: Any, done: Any, timeout: float = 30, **kw: Any
) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=run_relay, args=(settings, reader, publisher, stop), kwargs=kw)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "relay did not finish in time"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_batched_confirms_deliver_every_message_in_order_as_celery_task_messages(
    broker_settings: Settings,
) -> None:
    rows = pending(1000)
    publisher = AmqpPublisher(broker_settings.broker_url, Topology.from_settings(broker_settings))
    try:
        publisher.publish_batch(rows)
    finally:
        publisher.close()

    got = drain(broker_settings.broker_url, broker_settings.step_queue, expect=1000)
    assert [message_id_of(m) for m in got] == [r.message_id for r in rows]
    first, row = got[0], rows[0]
    assert first.content_type == "application/json"
    assert first.content_encoding == "utf-8"
    assert first.properties["delivery_mode"] == 2
    assert first.properties["correlation_id"] == row.message_id
    headers = first.headers
    assert headers["lang"] == "py"
    assert headers["task"] == STEP_TASK
    assert headers["id"] == headers["root_id"] == row.message_id
    assert headers["parent_id"] is None and headers["group"] is None
    assert headers["retries"] == 0 and headers["eta"] is None and headers["expires"] is None
    assert headers["kwargsrepr"] == "{}"
    assert headers["argsrepr"] == (
        f"order-payment v1 reserve_funds attempt 1 saga_id={row.saga_id}"
    )
    assert headers["origin"].startswith("saga-relay.")
    args, kwargs, embed = json.loads(first.body)
    assert args == [row.body] and kwargs == {}
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_an_unroutable_message_fails_the_batch_and_the_next_connection_recovers(
    broker_settings: Settings,
) -> None:
    topology = Topology.from_settings(broker_settings)
    publisher = AmqpPublisher(broker_settings.broker_url, topology)
    try:
        publisher.connect()
        with Connection(broker_settings.broker_url) as connection:
            connection.default_channel.queue_delete(broker_settings.step_queue)
        with pytest.raises(PublishFailed, match="not confirmed"):
            publisher.publish_batch(pending(3))
        # The failed batch dropped the connection; the next one re-declares.
        publisher.publish_batch(pending(3, start=10))
    finally:
        publisher.close()
    assert queue_depth(broker_settings.broker_url, broker_settings.step_queue) == 3


def test_relay_marks_rows_published_only_after_the_broker_confirmed_them(
    broker_settings: Settings, pg_url: str
) -> None:
    settings = replace(broker_settings, database_url=pg_url, relay_batch_size=100)
    engine = create_engine(settings)
    try:
        ids = add_outbox_rows(engine, 300)
        seen: list[tuple[int, int, int]] = []

        def after_publish(rows: Sequence[PendingMessage]) -> None:
            # Between confirm and mark: in the queue already, not yet marked.
            seen.append(
                (
                    len(rows),
                    queue_depth(settings.broker_url, settings.step_queue),
                    unpublished(engine),
                )
            )

        publisher = AmqpPublisher(settings.broker_url, Topology.from_settings(settings))
        run_until(
            settings,
            SqlOutboxReader(engine),
            publisher,
            lambda: unpublished(engine) == 0,
            after_publish=after_publish,
        )
        assert seen == [(100, 100, 300), (100, 200, 200), (100, 300, 100)]
        got = drain(settings.broker_url, settings.step_queue, expect=300)
        assert [message_id_of(m) for m in got] == ids == outbox_ids_in_order(engine)
    finally:
        engine.dispose()


def test_relay_waits_out_a_broker_outage_without_losing_or_marking_rows(
    broker_settings: Settings,
) -> None:
    rows = pending(50)
    reader = ListReader(rows)
    with TcpProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}//"
        settings = replace(broker_settings, broker_url=url, relay_batch_size=20)
        proxy.stop()  # the broker is "down" when the relay starts
        stop = threading.Event()
        publisher = AmqpPublisher(url, Topology.from_settings(settings), connect_timeout=2)
        thread = threading.Thread(
            target=run_relay,
            args=(settings, reader, publisher, stop),
            kwargs={"backoff": Backoff(initial=0.1, maximum=0.5)},
        )
        thread.start()
        try:
            # Evidence the relay tried while the broker was away: two publishes failed
            # (the first, and one retry after the backoff).
            wait_for(
                lambda: reader.failed_claims >= 2,
                timeout=30,
                what="two failed publishes",
                interval=0.02,
            )
            assert reader.published == set()
            proxy.start()
            deadline = time.monotonic() + 30
            while len(reader.published) < 50:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # Cut it again mid-run: the relay must come back by itself.
            proxy.stop()
            failed_before = reader.failed_claims
            reader.rows += pending(30, start=100)
            wait_for(
                lambda: reader.failed_claims >= failed_before + 2,
                timeout=30,
                what="two failed publishes of the new rows",
                interval=0.02,
            )
            assert len(reader.published) == 50
            proxy.start()
            deadline = time.monotonic() + 30
            while len(reader.published) < 80:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(timeout=30)
    got = drain(broker_settings.broker_url, broker_settings.step_queue, expect=80)
    assert sorted(message_id_of(m) for m in got) == sorted(r.message_id for r in reader.rows)


def test_kombu_publisher_serves_the_embedded_sqlite_broker(tmp_path: Any) -> None:
    url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    settings = Settings(broker_url=url, step_queue="steps", dead_letter_queue="dead-letter")
    topology = Topology.from_settings(settings)
    rows = pending(20)
    publisher = KombuPublisher(url, topology)
    try:
        publisher.publish_batch(rows)
    finally:
        publisher.close()
    with Connection(url) as connection:
        queue = connection.SimpleQueue(topology.kombu_step_queue())
        got = []
        for _ in range(20):
            message = queue.get(timeout=5)
            message.ack()
            got.append(message)
        queue.close()
    assert [m.headers["id"] for m in got] == [r.message_id for r in rows]
    assert json.loads(got[0].body)[0] == [rows[0].body]
