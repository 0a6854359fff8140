"""The worker's message consumer: poison goes to the dead-letter queue, never loops.

Celery decides about a message before any task runs: an undecodable body, a
message without task headers or naming an unregistered task is logged and
dropped or rejected by its Consumer. Here every such message, and a step
message whose body is not a valid StepMessage, is published to the dead-letter
queue with the reason in its headers and then acked. Screening happens in the
consumer (main process) so a pool process never sees a body it cannot decode:
Celery defers protocol v2 decoding to the pool, where a decode error would count
as an ordinary task failure and the message would be acked and lost.

Also: the native delayed delivery bootstep is left out. It is switched on when
quorum queues are detected and declares 28 extra exchanges/queues, for ETA
tasks; saga retries are delayed in the outbox, and database retries re-publish
without an ETA (see saga.entrypoints.celery.app), so nothing here sends ETA tasks.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from celery.worker.consumer import Consumer
from kombu.message import Message

from saga.adapters.rabbitmq.celery_message import STEP_TASK
from saga.adapters.rabbitmq.publishers import is_amqp_url
from saga.core.errors import SagaError
from saga.core.step_message import MalformedMessage, StepMessage
from saga.entrypoints.celery.beat import SWEEP_TASK

if TYPE_CHECKING:
    from saga.entrypoints.celery.app import SagaCelery

log = logging.getLogger("saga.worker")

# The tasks a saga worker runs: step messages and the sweeper's periodic task.
SAGA_TASKS = frozenset({STEP_TASK, SWEEP_TASK})

_DELAYED_DELIVERY = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class Poison(SagaError):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


def screen(message: Message, registered: Any) -> None:
    """Raise Poison if the message can never run; return for a runnable one."""
    headers = message.headers
    if not isinstance(headers, dict) or not headers.get("task"):
        raise Poison(
            "not a Celery task message: no 'task' header (protocol v2 headers missing)",
            "MissingHeaders",
        )
    name = headers["task"]
    if not isinstance(name, str) or name not in registered:
        raise Poison(f"unknown task {name!r}: no such task is registered", "UnknownTask")
    # Celery registers its own tasks (celery.group, celery.chord, ...) in every app;
    # a forged header naming one would make the worker run it with the message's
    # arguments, so only the tasks this worker exists for are accepted.
    if name not in SAGA_TASKS:
        raise Poison(
            f"unknown task {name!r}: not a saga task (accepted: {', '.join(sorted(SAGA_TASKS))})",
            "UnknownTask",
        )
    if name != STEP_TASK:
        return
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise Poison("step message has no 'id' header", "MissingHeaders")
    if message.content_type != "application/json":
        raise Poison(
            f"step message content type is {message.content_type!r}, not application/json",
            "DecodeError",
        )
    raw = message.body
    try:
        text = raw.decode(message.content_encoding or "utf-8") if isinstance(raw, bytes) else raw
        payload = json.loads(text)
    except (UnicodeDecodeError, LookupError, ValueError) as exc:
        raise Poison(f"step message body is not JSON: {exc}", "DecodeError") from None
    if not (isinstance(payload, list) and len(payload) == 3):
        raise Poison("task body must be [args, kwargs, embed] (Celery protocol v2)", "DecodeError")
    args, kwargs, embed = payload
    if not (isinstance(args, list) and len(args) == 1) or kwargs:
        raise Poison(
            f"{STEP_TASK} takes exactly one positional argument (the step message) and no "
            "keyword arguments",
            "MalformedMessage",
        )
    # A step message must not be able to make the worker run other tasks after it.
    if embed is not None and (
        not isinstance(embed, dict)
        or any(embed.get(k) for k in ("callbacks", "errbacks", "chain", "chord"))
    ):
        raise Poison(
            "step message carries callbacks, errbacks, a chain or a chord", "MalformedMessage"
        )
    try:
        step = StepMessage.from_body(args[0])
    except MalformedMessage as exc:
        raise Poison(str(exc), "MalformedMessage") from None
    if step.message_id != task_id:
        raise Poison(
            f"task id header {task_id!r} does not match the body's message_id {step.message_id!r}",
            "MalformedMessage",
        )


class DeclareTopology(bootsteps.StartStopStep):
    """Declare exchanges and queues, the dead-letter queue included, on (re)connect."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Consumer) -> None:
        app: SagaCelery = c.app
        app.saga_topology.declare_kombu(c.connection)


class SagaConsumer(Consumer):
    class Blueprint(Consumer.Blueprint):
        default_steps = [
            step for step in Consumer.Blueprint.default_steps if step != _DELAYED_DELIVERY
        ] + ["saga.entrypoints.celery.consumer:DeclareTopology"]

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The connection for monitoring events (Celery asks the consumer for no other).

        Without publisher confirms: the main process publishes three events per
        task for Flower, and waiting for a confirm of each one stalled the loop
        that hands messages to the pool (half its time in the benchmark). An
        event lost in a broker crash costs a line in Flower, nothing else; the
        publishes that matter (dead letters, retried copies) keep their confirms.
        """
        connection = self.app.connection_for_write(
            url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
        )
        return self.ensure_connected(connection)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        inner = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Message) -> Any:
            try:
                screen(message, self.app.tasks)
            except Poison as poison:
                return self.dead_letter(message, poison.reason, poison.error)
            return inner(message)

        return on_task_received

    def dead_letter(self, message: Message, reason: str, error: str) -> None:
        from saga.entrypoints.celery.dead_letter import publish_dead_letter

        app: SagaCelery = self.app
        headers = message.headers if isinstance(message.headers, dict) else {}
        delivery = message.delivery_info or {}
        try:
            publish_dead_letter(
                app,
                app.saga_topology,
                body=message.body,
                headers=headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                reason=reason,
                error=error,
                exchange=delivery.get("exchange"),
                routing_key=delivery.get("routing_key"),
                message_id=headers.get("id") if isinstance(headers.get("id"), str) else None,
            )
        except Exception:
            log.exception("dead-lettering failed", extra={"reason": reason})
            # RabbitMQ dead-letters a message rejected without requeue to the
            # step queue's dead-letter exchange (at least once): the reason is
            # then only in this log, but the message is kept. Other transports
            # have no dead-letter exchange, so there it goes back to the queue.
            requeue = not is_amqp_url(app.conf.broker_url or "")
            message.reject_log_error(log, self.connection_errors, requeue=requeue)
            return
        message.ack_log_error(log, self.connection_errors)

    # Celery's own verdicts, for anything the screen above let through.

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self.dead_letter(message, "not a Celery task message", "UnknownMessage")

    def on_unknown_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self.dead_letter(message, f"unknown task: {exc}", "UnknownTask")

    def on_invalid_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self.dead_letter(message, f"invalid task message: {exc}", "InvalidTask")

    def on_decode_error(self, message: Message, exc: BaseException) -> None:
        self.dead_letter(message, f"cannot decode message: {exc}", "DecodeError")
