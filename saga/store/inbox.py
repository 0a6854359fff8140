"""Processed message ids: the "updates applied" table of the BASE paper."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from saga.ports import StoreUnavailable
from saga.store.clock import utcnow
from saga.store.tables import inbox


class ConcurrentDelivery(StoreUnavailable):
    """Another transaction recorded this message id first.

    Only two deliveries of one message handled at the same moment meet here (the
    second passed `seen()` before the first committed). Failing the second
    transaction rolls back anything it did; it is a StoreUnavailable so the
    message is retried, and the retry finds it seen and drops it.
    """


class SqlInbox:
    def __init__(self, session: Session) -> None:
        self._session = session

    def seen(self, message_id: str) -> bool:
        found = self._session.execute(
            select(inbox.c.message_id).where(inbox.c.message_id == message_id)
        ).first()
        return found is not None

    def record(self, message_id: str, saga_id: str) -> None:
        try:
            self._session.execute(
                insert(inbox).values(message_id=message_id, saga_id=saga_id, processed_at=utcnow())
            )
        except IntegrityError as exc:
            raise ConcurrentDelivery(
                f"message {message_id} was processed by another transaction meanwhile"
            ) from exc
