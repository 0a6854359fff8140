"""Step messages as Celery task messages (protocol version 2).

The relay publishes outbox rows itself (batched confirms) instead of going
through Celery's `apply_async`, so it has to write what Celery would have
written: the task name and id in the headers, `[args, kwargs, embed]` in a JSON
body. See Celery's "Message Protocol" documentation, "Task messages, Version 2".

The task id is the outbox message id: Flower, the worker logs and the inbox then
all name a message the same way, and a republished duplicate keeps its id.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saga.ports.broker import PendingMessage

# The one task that runs saga steps; workers register it under this name.
STEP_TASK = "saga.run_step"

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"

_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(frozen=True)
class TaskMessage:
    task_id: str
    headers: dict[str, Any]
    body: bytes
    content_type: str = CONTENT_TYPE
    content_encoding: str = CONTENT_ENCODING

    @property
    def correlation_id(self) -> str:
        return self.task_id


def default_origin() -> str:
    return f"saga-relay.{os.getpid()}@{socket.gethostname()}"


def step_argsrepr(body: Mapping[str, Any]) -> str:
    """What an operator reads in Flower: which saga, step, attempt.

    Built from the known fields only, never repr(body), so nothing else a body
    might carry reaches the dashboard.
    """
    phase = body.get("phase", "?")
    return (
        f"{body.get('saga', '?')} v{body.get('version', '?')} "
        f"{'compensate ' if phase == 'undo' else ''}{body.get('step', '?')} "
        f"attempt {body.get('attempt', '?')} saga_id={body.get('saga_id', '?')}"
    )


def step_task_name(body: Mapping[str, Any]) -> str:
    """The name Flower and the worker's logs show: which saga, which step, and
    whether it is the step or its compensation ("order-payment.reserve_funds",
    "order-payment.reserve_funds.compensate"). Workers still run STEP_TASK: the
    name travels as Celery's `shadow` header, which names the task in events.
    """
    suffix = ".compensate" if body.get("phase") == "undo" else ""
    return f"{body.get('saga', '?')}.{body.get('step', '?')}{suffix}"


def step_task_message(message: PendingMessage, *, origin: str | None = None) -> TaskMessage:
    task_id = message.message_id
    headers: dict[str, Any] = {
        "lang": "py",
        "task": STEP_TASK,
        "id": task_id,
        "shadow": step_task_name(message.body),
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": step_argsrepr(message.body),
        "kwargsrepr": "{}",
        "origin": origin or default_origin(),
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    body = json.dumps([[message.body], {}, _EMBED], separators=(",", ":")).encode(CONTENT_ENCODING)
    return TaskMessage(task_id=task_id, headers=headers, body=body)
