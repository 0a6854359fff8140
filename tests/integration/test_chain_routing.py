"""SAGA_CHAIN_QUEUE: the relay's publisher sends chain step messages to the chain
executor's queue and every other message to the step queue, on the real RabbitMQ;
without the setting everything stays on the step queue, as before."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from saga.app.routing import ChainRouting
from saga.bootstrap import Container
from saga.config import ConfigError, Settings
from saga.ports.broker import PendingMessage
from saga.registry_loader import load_registry
from tests.support.outbox import step_body
from tests.support.rabbitmq import delete_queue, drain

DEFINITIONS = "saga.examples.order_payment_ledger"
CHAIN_STEP = "record_on_ledger"


def _messages() -> list[PendingMessage]:
    """A local step and a chain step of the ledger saga (v2), and a message naming an
    unknown saga (left to a worker, which dead-letters it)."""
    bodies = [
        step_body(str(uuid.uuid4()), step="reserve_funds", version=2),
        step_body(str(uuid.uuid4()), step=CHAIN_STEP, version=2),
        step_body(str(uuid.uuid4()), step=CHAIN_STEP, version=2, saga="no-such-saga"),
    ]
    return [PendingMessage(i, b["message_id"], b["saga_id"], b) for i, b in enumerate(bodies, 1)]


def _steps(got: list[object]) -> list[tuple[str, str]]:
    out = []
    for message in got:
        body = json.loads(message.body)  # type: ignore[attr-defined]
        out.append((body[0][0]["saga"], body[0][0]["step"]))
    return sorted(out)


@pytest.mark.parametrize("transport", ["aio-pika", "kombu"])
def test_chain_steps_go_to_the_chain_queue_and_the_rest_to_the_step_queue(
    broker_settings: Settings, transport: str
) -> None:
    chain_queue = f"{broker_settings.step_queue}.chain"
    settings = replace(broker_settings, definitions=DEFINITIONS, chain_queue=chain_queue)
    container = Container(settings)
    if transport == "kombu":
        from saga.adapters.rabbitmq.publishers import KombuPublisher
        from saga.adapters.rabbitmq.topology import Topology

        publisher = KombuPublisher(
            settings.broker_url,
            Topology.from_settings(settings),
            chain_route=ChainRouting(container.registry).is_chain,
        )
    else:
        publisher = container.publisher()
    try:
        publisher.publish_batch(_messages())
    finally:
        publisher.close()
    try:
        on_chain = drain(settings.broker_url, chain_queue, expect=1)
        on_steps = drain(settings.broker_url, settings.step_queue, expect=2)
    finally:
        delete_queue(settings.broker_url, chain_queue)
    assert _steps(on_chain) == [("order-payment", CHAIN_STEP)]
    assert _steps(on_steps) == [("no-such-saga", CHAIN_STEP), ("order-payment", "reserve_funds")]


def test_without_a_chain_queue_every_message_goes_to_the_step_queue(
    broker_settings: Settings,
) -> None:
    settings = replace(broker_settings, definitions=DEFINITIONS)
    publisher = Container(settings).publisher()
    try:
        publisher.publish_batch(_messages())
    finally:
        publisher.close()
    assert len(drain(settings.broker_url, settings.step_queue, expect=3)) == 3


def test_routing_reads_the_step_kind_from_the_definitions() -> None:
    routing = ChainRouting(load_registry(DEFINITIONS))
    body = step_body("s", step=CHAIN_STEP, version=2)
    assert routing.is_chain(body)
    assert not routing.is_chain({**body, "step": "reserve_funds"})
    # Version 1 of the saga has no ledger step; malformed bodies are not judged here.
    assert not routing.is_chain({**body, "version": 1})
    assert not routing.is_chain({**body, "version": "2"})
    assert not routing.is_chain({})


def test_a_chain_queue_that_is_the_step_queue_is_refused() -> None:
    with pytest.raises(ConfigError, match="SAGA_CHAIN_QUEUE"):
        Settings.from_env({"SAGA_CHAIN_QUEUE": "saga.steps"})
    with pytest.raises(ConfigError, match="SAGA_CHAIN_IN_FLIGHT"):
        Settings.from_env({"SAGA_CHAIN_IN_FLIGHT": "0"})
