"""RabbitMQ (and kombu transport) adapters: topology, Celery task messages, publishers."""

from saga.adapters.rabbitmq.celery_message import STEP_TASK, TaskMessage, step_task_message
from saga.adapters.rabbitmq.publishers import (
    AmqpPublisher,
    KombuPublisher,
    create_publisher,
    is_amqp_url,
)
from saga.adapters.rabbitmq.topology import DLQ_HEADERS, Topology, declare_topology
from saga.ports.broker import PublishFailed

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
