"""Deleting what is no longer needed, so the outbox and inbox do not grow forever.

Published outbox rows are kept for a while for audits and for a relay that
crashed before marking (it republishes; the row must still be there to be found
published or not). Inbox ids are kept as long as a broker could plausibly
redeliver their message. An id purged too early is not a double effect either:
a very late redelivery passes the inbox but the saga's state no longer awaits
that step attempt, so the orchestrator drops it as stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from saga.adapters.sql.clock import utcnow
from saga.adapters.sql.errors import TRANSIENT_ERRORS, unavailable
from saga.adapters.sql.tables import inbox, outbox

DEFAULT_RETENTION = timedelta(days=7)
# Rows deleted per transaction: short transactions keep locks and WAL small.
PURGE_BATCH = 5_000


@dataclass(frozen=True)
class Purged:
    outbox: int
    inbox: int


def purge(
    engine: Engine,
    *,
    retention: timedelta = DEFAULT_RETENTION,
    now: datetime | None = None,
    batch: int = PURGE_BATCH,
) -> Purged:
    """Delete outbox rows published and inbox ids processed before now - retention."""
    if retention < timedelta(0):
        raise ValueError("retention must not be negative")
    cutoff = (now or utcnow()) - retention
    try:
        gone_outbox = _purge_outbox(engine, cutoff, batch)
        gone_inbox = _purge_inbox(engine, cutoff, batch)
    except TRANSIENT_ERRORS as exc:
        raise unavailable(exc) from exc
    return Purged(outbox=gone_outbox, inbox=gone_inbox)


def _purge_outbox(engine: Engine, cutoff: datetime, batch: int) -> int:
    total = 0
    while True:
        with engine.begin() as connection:
            ids = select(outbox.c.id).where(
                outbox.c.published_at.is_not(None), outbox.c.published_at < cutoff
            )
            deleted = connection.execute(
                delete(outbox).where(outbox.c.id.in_(ids.limit(batch).scalar_subquery()))
            ).rowcount
        total += deleted
        if deleted < batch:
            return total


def _purge_inbox(engine: Engine, cutoff: datetime, batch: int) -> int:
    total = 0
    while True:
        with engine.begin() as connection:
            ids = select(inbox.c.message_id).where(inbox.c.processed_at < cutoff)
            deleted = connection.execute(
                delete(inbox).where(inbox.c.message_id.in_(ids.limit(batch).scalar_subquery()))
            ).rowcount
        total += deleted
        if deleted < batch:
            return total
