"""What happened to each saga, in order, for operators."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from saga.adapters.sql.tables import saga_history
from saga.ports.store import HistoryEntry

# Built once (on every step's path); the columns come from the parameters.
_ADD = insert(saga_history)


class SqlHistory:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, entry: HistoryEntry) -> None:
        self._session.execute(
            _ADD,
            {
                "saga_id": entry.saga_id,
                "at": entry.at,
                "kind": entry.kind,
                "detail": entry.detail,
                "actor": entry.actor,
            },
        )

    def for_saga(self, saga_id: str) -> list[HistoryEntry]:
        rows = self._session.execute(
            select(saga_history)
            .where(saga_history.c.saga_id == saga_id)
            .order_by(saga_history.c.id)
        )
        return [HistoryEntry(r.at, r.saga_id, r.kind, r.detail, r.actor) for r in rows]
