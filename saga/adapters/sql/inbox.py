"""Processed message ids: the "updates applied" table of the BASE paper."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, bindparam, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from saga.adapters.sql.clock import utcnow
from saga.adapters.sql.tables import inbox
from saga.ports.store import StoreUnavailable


class ConcurrentDelivery(StoreUnavailable):
    """Another transaction recorded this message id first.

    Only two deliveries of one message handled at the same moment meet here (the
    second passed `seen()` before the first committed). Failing the second
    transaction rolls back anything it did; it is a StoreUnavailable so the
    message is retried, and the retry finds it seen and drops it.
    """


# Built once (on every step's path); the columns come from the parameters.
_CLAIM_POSTGRESQL = (
    postgresql.insert(inbox)
    .on_conflict_do_nothing(index_elements=["message_id"])
    .returning(inbox.c.message_id)
)
_CLAIM_SQLITE = (
    sqlite.insert(inbox)
    .on_conflict_do_nothing(index_elements=["message_id"])
    .returning(inbox.c.message_id)
)
# Asked at every look a chain step takes at its saga (several per task): a statement
# built once and sent on the connection skips the ORM session's per-call planning,
# which cost about as much CPU as the round trip itself.
_SEEN = select(inbox.c.message_id).where(inbox.c.message_id == bindparam("message_id"))


class SqlInbox:
    def __init__(
        self, session: Session, connection: Callable[[], Connection] | None = None
    ) -> None:
        self._session = session
        self._conn = connection or session.connection
        self._dialect = session.get_bind().dialect.name

    def seen(self, message_id: str) -> bool:
        found = self._conn().execute(_SEEN, {"message_id": message_id}).first()
        return found is not None

    def claim(self, message_id: str, saga_id: str) -> bool:
        """Record the message in this transaction; False if it already was processed.

        One round trip where `seen` + `record` take two. On PostgreSQL a second
        transaction claiming the same id waits on the primary key until the first
        ends, then finds it (committed) or claims it (rolled back); on SQLite the
        write lock already serialises them.
        """
        claimed = (
            self._conn()
            .execute(
                _CLAIM_POSTGRESQL if self._dialect == "postgresql" else _CLAIM_SQLITE,
                {"message_id": message_id, "saga_id": saga_id, "processed_at": utcnow()},
            )
            .first()
        )
        return claimed is not None

    def record(self, message_id: str, saga_id: str) -> None:
        try:
            self._conn().execute(
                insert(inbox).values(message_id=message_id, saga_id=saga_id, processed_at=utcnow())
            )
        except IntegrityError as exc:
            raise ConcurrentDelivery(
                f"message {message_id} was processed by another transaction meanwhile"
            ) from exc
