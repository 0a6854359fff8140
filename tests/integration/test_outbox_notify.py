"""The relay's wake-up on PostgreSQL (migrations 0004, 0005): a committed outbox row
that is due wakes a listening reader; a held-back row does not, until released."""

from __future__ import annotations

import uuid

from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.outbox import SqlOutboxReader
from saga.ports.store import OutboxMessage


def message(delay: float = 0.0) -> OutboxMessage:
    message_id = str(uuid.uuid4())
    return OutboxMessage(message_id, str(uuid.uuid4()), {"message_id": message_id}, delay)


def test_only_due_rows_wake_the_relay(pg_url: str) -> None:
    engine = create_engine(pg_url)
    uow = SqlUnitOfWorkFactory(engine)
    reader = SqlOutboxReader(engine)
    try:
        assert reader.wait_for_rows(0.05) is False  # listening from here on

        held = message(delay=3600)
        with uow() as u:
            u.outbox.add(held)
            u.commit()
        assert reader.wait_for_rows(0.5) is False

        with uow() as u:
            u.outbox.release(held.message_id)
            u.commit()
        assert reader.wait_for_rows(2.0) is True

        with uow() as u:
            u.outbox.add(message())
            u.outbox.add(message())
            u.commit()
        assert reader.wait_for_rows(2.0) is True
        # Both rows' notifications arrived as one (same transaction, same payload).
        assert reader.wait_for_rows(0.3) is False

        with uow() as u:
            u.outbox.add(message())  # rolled back: nothing to wake up for
        assert reader.wait_for_rows(0.5) is False
    finally:
        reader.close()
        engine.dispose()
