"""RabbitMQ (and kombu transport) adapters: topology, Celery task messages, publishers."""

from saga.broker.celery_message import STEP_TASK, TaskMessage, step_task_message
from saga.broker.publishers import (
    AmqpPublisher,
    KombuPublisher,
    PublishFailed,
    create_publisher,
    is_amqp_url,
)
from saga.broker.topology import DLQ_HEADERS, Topology, declare_topology

__all__ = [
    "DLQ_HEADERS",
    "STEP_TASK",
    "AmqpPublisher",
    "KombuPublisher",
    "PublishFailed",
    "TaskMessage",
    "Topology",
    "create_publisher",
    "declare_topology",
    "is_amqp_url",
    "step_task_message",
]
