"""Outbox rows for relay tests, written through the store's own unit of work."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.core.step_message import Phase, StepMessage
from saga.ports import OutboxMessage
from saga.store import SqlUnitOfWorkFactory
from saga.store.tables import outbox


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
        phase=Phase.DO,
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
