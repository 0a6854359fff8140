"""Outbox rows for relay tests, written through the store's own unit of work."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.sql import SqlOutboxReader, SqlUnitOfWorkFactory
from saga.adapters.sql.tables import outbox
from saga.app.orchestrator import Orchestrator
from saga.app.steps import Outcome
from saga.core.purpose import Purpose
from saga.core.step_message import StepMessage
from saga.ports.store import OutboxMessage


def step_body(
    saga_id: str,
    *,
    message_id: str | None = None,
    step: str = "reserve_funds",
    saga: str = "order-payment",
    version: int = 1,
    attempt: int = 1,
) -> dict[str, Any]:
    return StepMessage(
        message_id=message_id or str(uuid.uuid4()),
        saga_id=saga_id,
        saga=saga,
        version=version,
        step=step,
        attempt=attempt,
        phase=Purpose.DO,
    ).to_body()


def add_outbox_rows(engine: Engine, count: int) -> list[str]:
    """Commit `count` step messages (one per made-up saga); return their message ids."""
    ids: list[str] = []
    with SqlUnitOfWorkFactory(engine)() as uow:
        for _ in range(count):
            saga_id = str(uuid.uuid4())
            body = step_body(saga_id)
            uow.outbox.add(OutboxMessage(body["message_id"], saga_id, body))
            ids.append(body["message_id"])
        uow.commit()
    return ids


def unpublished(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            ).scalar_one()
        )


def outbox_ids_in_order(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [r[0] for r in connection.execute(select(outbox.c.message_id).order_by(outbox.c.id))]


def drive_outbox(
    orchestrator: Orchestrator,
    engine: Engine,
    *,
    timeout: float = 30.0,
    batch: int = 20,
    idle: float = 0.05,
) -> list[Outcome]:
    """Publish-and-handle every outbox row, in publish order, until none is left
    (a relay and a worker, no broker); the outcome of each message handled.

    A row not yet due (a retry's backoff, a chain step's re-check) is waited for, so
    the outbox empties only when the sagas stop sending; fails after `timeout`.
    """
    reader = SqlOutboxReader(engine)
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with reader.claim(batch) as claimed:
            reader.mark_published([p.id for p in claimed])
        for pending in claimed:
            outcomes.append(orchestrator.handle(StepMessage.from_body(pending.body)))
        if not claimed:
            if reader.pending_count() == 0:
                return outcomes
            time.sleep(idle)  # a retry or a re-check waits out its delay
    raise AssertionError(
        f"the outbox did not drain in {timeout}s; outcomes so far: {[str(o) for o in outcomes]}"
    )
