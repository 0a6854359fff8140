"""What happened to each saga, in order, for operators."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.orm import Session

from saga.adapters.sql.tables import saga_history
from saga.ports.store import HistoryEntry

# Built once (on every step's path); the columns come from the parameters.
_ADD = insert(saga_history)


class SqlHistory:
    def __init__(
        self, session: Session, connection: Callable[[], Connection] | None = None
    ) -> None:
        self._session = session
        self._conn = connection or session.connection

    def add(self, entry: HistoryEntry) -> None:
        self._conn().execute(_ADD, _values(entry))

    def add_many(self, entries: Sequence[HistoryEntry]) -> None:
        # One executemany: psycopg 3 pipelines it, one round trip for all of them.
        if entries:
            self._conn().execute(_ADD, [_values(entry) for entry in entries])

    def for_saga(self, saga_id: str) -> list[HistoryEntry]:
        rows = self._session.execute(
            select(saga_history)
            .where(saga_history.c.saga_id == saga_id)
            .order_by(saga_history.c.id)
        )
        return [HistoryEntry(r.at, r.saga_id, r.kind, r.detail, r.actor) for r in rows]


def _values(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "saga_id": entry.saga_id,
        "at": entry.at,
        "kind": entry.kind,
        "detail": entry.detail,
        "actor": entry.actor,
    }
