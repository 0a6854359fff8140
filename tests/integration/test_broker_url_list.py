"""A `;`-separated broker URL list and the queue type, against the real RabbitMQ.

The three-node failover itself is tests/fault/test_rabbit_cluster.py; these are the
cheap cases one broker can show: a dead node first in the list is passed over by
every client (the relay's publisher, the DLQ and queue passes), a queue of the
other type is refused with what to do, and a list's passwords are all redacted.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from kombu import Connection

from saga.adapters.rabbitmq import AmqpPublisher, Topology
from saga.adapters.rabbitmq.dead_letters import DeadLetterQueue
from saga.adapters.rabbitmq.publishers import broker_urls
from saga.adapters.rabbitmq.queues import RabbitQueueAdmin, queue_stats
from saga.adapters.rabbitmq.topology import TopologyMismatch, declare_topology
from saga.config import ConfigError, Settings
from saga.ports.broker import PendingMessage
from tests.support.outbox import step_body
from tests.support.ports import free_port
from tests.support.processes import Processes
from tests.support.rabbitmq import drain, message_id_of
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for


def _dead_url() -> str:
    # A free port nobody listens on: the connection is refused at once.
    return f"amqp://guest:secret@127.0.0.1:{free_port()}//"


def test_the_relay_publisher_passes_over_a_dead_node(broker_settings: Settings) -> None:
    urls = f"{_dead_url()};{broker_settings.broker_url}"
    publisher = AmqpPublisher(urls, Topology.from_settings(broker_settings), connect_timeout=3)
    saga_id = str(uuid.uuid4())
    body = step_body(saga_id)
    try:
        publisher.publish_batch([PendingMessage(1, body["message_id"], saga_id, body)])
    finally:
        publisher.close()
    got = drain(broker_settings.broker_url, broker_settings.step_queue, expect=1)
    assert [message_id_of(m) for m in got] == [body["message_id"]]


def test_a_batch_whose_node_dies_is_published_again_on_the_next(
    broker_settings: Settings,
) -> None:
    """The relay's node goes away between two batches: the next batch goes out on
    the next node within the same publish_batch call, nothing raised, nothing lost."""
    topology = Topology.from_settings(broker_settings)
    batch = []
    for i in range(5):
        saga_id = str(uuid.uuid4())
        body = step_body(saga_id)
        batch.append(PendingMessage(i + 1, body["message_id"], saga_id, body))
    with TcpProxy("127.0.0.1", 5672) as proxy:
        urls = f"amqp://guest:guest@127.0.0.1:{proxy.port}//;{broker_settings.broker_url}"
        publisher = AmqpPublisher(urls, topology, connect_timeout=3)
        try:
            publisher.publish_batch(batch[:1])  # through the proxy, the first node
            proxy.stop()  # every connection through it cut, and no new one taken
            publisher.publish_batch(batch[1:])
        finally:
            publisher.close()
    got = drain(broker_settings.broker_url, broker_settings.step_queue, expect=len(batch))
    assert sorted(message_id_of(m) for m in got) == sorted(m.message_id for m in batch)


def test_queue_passes_pass_over_a_dead_node(broker_settings: Settings) -> None:
    declare_topology(broker_settings)
    listed = replace(broker_settings, broker_url=f"{_dead_url()};{broker_settings.broker_url}")
    assert [(s.role, s.exists) for s in queue_stats(listed)] == [
        ("steps", True),
        ("dead-letter", True),
    ]
    # `saga dlq` and the API's DLQ depth.
    with DeadLetterQueue(listed, connect_timeout=3) as dlq:
        assert dlq.depth() == 0
    assert RabbitQueueAdmin(listed).dead_letter_depth() == 0


def test_a_classic_queue_met_by_quorum_says_what_to_do(broker_settings: Settings) -> None:
    classic = replace(broker_settings, queue_type="classic")
    declare_topology(classic)
    with pytest.raises(TopologyMismatch) as caught:
        declare_topology(broker_settings)
    message = str(caught.value)
    assert broker_settings.dead_letter_queue in message
    assert "SAGA_QUEUE_TYPE=classic" in message
    assert f"rabbitmqctl delete_queue {broker_settings.dead_letter_queue}" in message
    # The relay's declarations (aio-pika) say the same, and publish nothing.
    publisher = AmqpPublisher(broker_settings.broker_url, Topology.from_settings(broker_settings))
    try:
        with pytest.raises(Exception, match="SAGA_QUEUE_TYPE=classic"):
            publisher.connect()
    finally:
        publisher.close()
    # The classic queues still stand: nothing was changed by the refused declarations.
    with Connection(broker_settings.broker_url) as connection:
        channel = connection.channel()
        channel.queue_declare(broker_settings.step_queue, passive=True)
        channel.close()


def test_classic_queues_keep_the_dead_letter_route(broker_settings: Settings) -> None:
    topology = Topology.from_settings(replace(broker_settings, queue_type="classic"))
    assert "x-queue-type" not in topology.step_queue_arguments()
    arguments = topology.step_queue_arguments()
    assert arguments["x-dead-letter-exchange"] == topology.dead_letter_exchange
    quorum = Topology.from_settings(broker_settings).step_queue_arguments()
    assert quorum["x-queue-type"] == "quorum"
    assert quorum["x-delivery-limit"] > 0


def test_settings_redact_every_password_of_a_url_list() -> None:
    s = Settings(broker_url="amqp://u:pw1@h1:5672//;amqp://u:pw2@h2:5673//")
    shown = s.redacted()["SAGA_BROKER_URL"]
    assert "pw1" not in shown and "pw2" not in shown
    assert shown == "amqp://u:***@h1:5672//;amqp://u:***@h2:5673//"
    assert broker_urls(s.broker_url) == ["amqp://u:pw1@h1:5672//", "amqp://u:pw2@h2:5673//"]


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="SAGA_QUEUE_TYPE='mirrored'"):
        Settings.from_env({"SAGA_QUEUE_TYPE": "mirrored"})


def test_a_worker_meeting_a_classic_queue_stops_and_says_what_to_do(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    """Celery's own declaration would log a bare PRECONDITION_FAILED and exit 0."""
    declare_topology(replace(broker_settings, queue_type="classic"))
    settings = replace(broker_settings, database_url=pg_url)
    with Processes(tmp_path) as procs:
        worker = procs.worker(settings, concurrency=1)
        wait_for(lambda: not worker.alive(), timeout=60, what="the worker to stop")
        assert worker.returncode not in (0, None), worker.tail()
        assert "SAGA_QUEUE_TYPE=classic" in worker.log_text(), worker.tail()
        assert "rabbitmqctl delete_queue" in worker.log_text(), worker.tail()
