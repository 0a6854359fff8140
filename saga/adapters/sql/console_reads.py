"""What the operator console's overview counts, read in a few indexed statements.

Read-only, on a plain connection. The last hour is cut into buckets: sagas
started per bucket (by created_at, ix_sagas_created_at) and sagas that reached an
end state per bucket (status and updated_at, ix_sagas_status_updated_at; a
finished saga's last update is when it finished).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from saga.adapters.sql.outbox import count_unpublished, oldest_unpublished_age
from saga.adapters.sql.tables import saga_steps, sagas

# End states, and the one that needs an operator.
ENDED = ("completed", "compensated", "failed")
STUCK_PREFIX = "stuck"


@dataclass(frozen=True)
class Bucket:
    start: datetime
    started: int = 0
    ended: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Overview:
    by_status: dict[str, int]
    buckets: list[Bucket]
    waiting_for_ledger: int
    stuck: int
    outbox_unpublished: int
    relay_lag_seconds: float | None

    @property
    def failed(self) -> int:
        return self.by_status.get("failed", 0)

    @property
    def finished_last_hour(self) -> int:
        return sum(sum(b.ended.values()) for b in self.buckets)

    @property
    def started_last_hour(self) -> int:
        return sum(b.started for b in self.buckets)


def overview(
    connection: Connection, *, now: datetime | None = None, bucket_minutes: int = 5
) -> Overview:
    now = now or datetime.now(UTC)
    step = timedelta(minutes=bucket_minutes)
    count = 60 // bucket_minutes
    first = now - step * count
    starts = [first + step * i for i in range(count)]
    by_status = {
        status: n
        for status, n in connection.execute(
            select(sagas.c.status, func.count()).group_by(sagas.c.status)
        )
    }
    started = [0] * count
    for (created,) in connection.execute(
        select(sagas.c.created_at).where(sagas.c.created_at >= first)
    ):
        started[_index(created, first, step, count)] += 1
    ended: list[dict[str, int]] = [{} for _ in range(count)]
    rows = connection.execute(
        select(sagas.c.status, sagas.c.updated_at).where(
            sagas.c.status.in_(ENDED), sagas.c.updated_at >= first
        )
    )
    for status, updated in rows:
        slot = ended[_index(updated, first, step, count)]
        slot[status] = slot.get(status, 0) + 1
    waiting = connection.execute(
        select(func.count())
        .select_from(saga_steps.join(sagas, sagas.c.id == saga_steps.c.saga_id))
        .where(
            saga_steps.c.waiting_since.is_not(None),
            sagas.c.status.in_(("running", "compensating")),
        )
    ).scalar_one()
    stuck = connection.execute(
        select(func.count()).where(
            and_(sagas.c.status == "failed", sagas.c.reason.like(STUCK_PREFIX + "%"))
        )
    ).scalar_one()
    # The relay's own measures (the metrics' too): due rows by the database's clock.
    lag = oldest_unpublished_age(connection, connection.dialect)
    pending = count_unpublished(connection)
    return Overview(
        by_status=by_status,
        buckets=[Bucket(s, started[i], ended[i]) for i, s in enumerate(starts)],
        waiting_for_ledger=int(waiting),
        stuck=int(stuck),
        outbox_unpublished=int(pending),
        relay_lag_seconds=lag,
    )


def _index(at: datetime, first: datetime, step: timedelta, count: int) -> int:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return min(count - 1, max(0, int((at - first) / step)))
