"""Claiming a step message and locking its saga: one statement on PostgreSQL.

A local step's transaction starts by recording its message in the inbox (a
message seen before is a duplicate: nothing else happens), marking a message the
worker held back for itself as published (`take`), and locking the saga's row.
On PostgreSQL these are one statement, data-modifying CTEs in front of the
locking read; the saga's steps are still read by a statement of their own after
it (see `_LOCK` in saga.adapters.sql.repository for why).

Order inside the statement matters: the lock is taken only if the claim
succeeded (an EXISTS over the claim's RETURNING, evaluated once before the
saga's row is scanned), so a transaction claims the message before it waits for
the saga, as separate statements did. Two deliveries of one message then meet at
the inbox's primary key, never one at the key and the other at the saga's row
(which could deadlock). A duplicate takes no lock and marks nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, exists, func, literal_column, select, true, update
from sqlalchemy.dialects import postgresql

from saga.adapters.sql.tables import UtcDateTime, inbox, outbox, sagas

# Bind names are never column names: SQLAlchemy would take a parameter named like
# a column of the UPDATE for a value to SET.
_CLAIMED = (
    postgresql.insert(inbox)
    .values(
        message_id=bindparam("b_message_id"),
        saga_id=bindparam("b_saga_id"),
        processed_at=bindparam("b_processed_at", type_=UtcDateTime()),
    )
    .on_conflict_do_nothing(index_elements=["message_id"])
    .returning(inbox.c.message_id)
    .cte("claimed")
)
_FRESH = exists(select(_CLAIMED.c.message_id))
_TAKEN = (
    update(outbox)
    .where(
        outbox.c.message_id == bindparam("b_message_id"), outbox.c.published_at.is_(None), _FRESH
    )
    .values(published_at=func.now())
    .returning(outbox.c.id)
    .cte("taken")
)
_LOCKED = (
    select(sagas)
    .where(sagas.c.id == bindparam("b_saga_id"), _FRESH)
    .with_for_update()
    .cte("locked")
)
# One row whatever happened: `fresh`, and the saga's columns (NULL when the claim
# was a duplicate or there is no such saga).
_ONE = select(literal_column("1").label("one")).subquery("one")
CLAIM_AND_LOCK = select(_FRESH.label("fresh"), *_LOCKED.c).select_from(
    _ONE.outerjoin(_LOCKED, true())
)
CLAIM_TAKE_AND_LOCK = CLAIM_AND_LOCK.add_cte(_TAKEN)


def claim_and_lock(
    connection: Connection, message_id: str, saga_id: str, processed_at: Any, *, take: bool
) -> tuple[bool, Any]:
    """(fresh, the saga's locked row or None) in one statement (PostgreSQL only)."""
    row = connection.execute(
        CLAIM_TAKE_AND_LOCK if take else CLAIM_AND_LOCK,
        {"b_message_id": message_id, "b_saga_id": saga_id, "b_processed_at": processed_at},
    ).one()
    fresh = bool(row.fresh)
    return fresh, row if fresh and row.id is not None else None
