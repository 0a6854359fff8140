"""Finding sagas for operators: filters, totals and keyset pages (`saga list`, `saga wait`).

Read-only, on a plain connection (no unit of work, no locks). A search returns
summaries: the saga row joined with its current step, in one statement, so
`saga wait` on a thousand sagas is one query per poll, not a thousand.

The queries are written for the indexes the store has: ids by primary key, an
idempotency key by its unique index, a status with last progress by
`ix_sagas_status_updated_at`; a page starts where the last one ended,
`(updated_at, id)` past a cursor, instead of an OFFSET that reads and discards
every earlier row. An input field is matched with JSONB containment (`@>`) on
PostgreSQL, which the GIN index `ix_sagas_input` serves, and with `json_extract`
on SQLite.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Row

from saga.adapters.sql.tables import UtcDateTime, saga_steps, sagas
from saga.core.errors import SagaError
from saga.core.state import SagaStatus, StepStatus
from saga.ports.store import SagaRecord

# A path into the input: dotted names, each a plain identifier (`customer_id`, `address.city`).
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*")


class BadFilter(SagaError, ValueError):
    """A filter or cursor an operator typed that cannot be used; the message says why."""


@dataclass(frozen=True)
class InputField:
    """`path=value` on the saga's input; the value as typed on the command line."""

    path: str
    value: str

    @classmethod
    def parse(cls, text: str) -> InputField:
        path, sep, value = text.partition("=")
        path = path.strip()
        if not sep or not _FIELD.fullmatch(path):
            raise BadFilter(
                f"{text!r} is not FIELD=VALUE; e.g. customer_id=c-17 or address.city=Lyon "
                "(FIELD: letters, digits, _ and -, dots between nested names)"
            )
        return cls(path, value)

    def candidates(self) -> list[Any]:
        """The JSON values the typed text can mean: always the string, and the number,
        boolean or null it spells (`amount_cents=1250` matches 1250 and "1250")."""
        found: list[Any] = [self.value]
        try:
            parsed = json.loads(self.value)
        except ValueError:
            return found
        if parsed is None or isinstance(parsed, bool | int | float):
            found.append(parsed)
        return found


@dataclass(frozen=True)
class SagaFilter:
    """Which sagas; every field given must hold (AND). Empty: every saga."""

    ids: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    name: str | None = None
    idempotency_key: str | None = None
    # Last progress before this: with it, pages run oldest first (the longest stuck).
    older_than: datetime | None = None
    inputs: tuple[InputField, ...] = ()
    # The current step's name, and text in the saga's reason or that step's last
    # error (case-insensitive; a scan of the rows the other filters leave).
    step: str | None = None
    error: str | None = None
    # Only sagas whose current step waits for an unreachable ledger.
    waiting_for_ledger: bool = False

    @property
    def oldest_first(self) -> bool:
        return self.older_than is not None

    @property
    def needs_step(self) -> bool:
        """Whether the condition reads the current step's row."""
        return self.step is not None or self.error is not None or self.waiting_for_ledger


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last saga's (updated_at, id). Typed back as `--after`."""

    updated_at: datetime
    saga_id: str

    def token(self) -> str:
        return f"{self.updated_at.astimezone(UTC).isoformat()},{self.saga_id}"

    @classmethod
    def parse(cls, token: str) -> Cursor:
        when, sep, saga_id = token.strip().partition(",")
        try:
            at = datetime.fromisoformat(when)
        except ValueError:
            at = None
        if not sep or not saga_id or at is None:
            raise BadFilter(
                f"--after {token!r} is not a cursor; copy the one the previous page printed "
                "(TIME,SAGA_ID after `next:`)"
            )
        return cls(at if at.tzinfo else at.replace(tzinfo=UTC), saga_id)


@dataclass(frozen=True)
class SagaSummary:
    """A saga as lists show it: its row and its current step (no step list, no input)."""

    saga_id: str
    name: str
    version: int
    status: SagaStatus
    reason: str | None
    idempotency_key: str | None
    created_at: datetime | None
    updated_at: datetime | None
    step: str | None
    step_status: StepStatus | None
    attempts: int
    compensation_attempts: int
    waiting_since: datetime | None

    @classmethod
    def of(cls, record: SagaRecord) -> SagaSummary:
        state = record.state
        step = state.steps[state.current] if 0 <= state.current < len(state.steps) else None
        return cls(
            saga_id=state.saga_id,
            name=state.name,
            version=state.version,
            status=state.status,
            reason=state.reason,
            idempotency_key=record.idempotency_key,
            created_at=record.created_at,
            updated_at=record.updated_at,
            step=step.name if step else None,
            step_status=step.status if step else None,
            attempts=step.attempts if step else 0,
            compensation_attempts=step.compensation_attempts if step else 0,
            waiting_since=step.waiting_since if step else None,
        )

    @property
    def cursor(self) -> Cursor:
        assert self.updated_at is not None  # the column is NOT NULL
        return Cursor(self.updated_at, self.saga_id)


@dataclass(frozen=True)
class SagaPage:
    summaries: list[SagaSummary]
    # Every saga the filter matches (all pages), and how many of them per status.
    total: int
    by_status: dict[str, int]
    # Where the next page starts; None on the last page.
    next: Cursor | None


# A saga's row with its current step (none past the last step).
_WITH_STEP = sagas.outerjoin(
    saga_steps,
    and_(saga_steps.c.saga_id == sagas.c.id, saga_steps.c.idx == sagas.c.current),
)

_SUMMARY = select(
    sagas.c.id,
    sagas.c.name,
    sagas.c.version,
    sagas.c.status,
    sagas.c.reason,
    sagas.c.idempotency_key,
    sagas.c.created_at,
    sagas.c.updated_at,
    saga_steps.c.name.label("step"),
    saga_steps.c.status.label("step_status"),
    saga_steps.c.attempts,
    saga_steps.c.compensation_attempts,
    saga_steps.c.waiting_since,
).select_from(_WITH_STEP)


def search(
    connection: Connection,
    where: SagaFilter,
    *,
    limit: int,
    after: Cursor | None = None,
    totals: bool = True,
) -> SagaPage:
    """One page of the sagas `where` selects, newest progress first (oldest first with
    `older_than`), starting past `after`; with the totals of the whole selection
    unless `totals` is false (then total and by_status are -1 and empty: counting
    every match costs a pass over them, a page only its own rows)."""
    if limit < 1:
        raise BadFilter("the page size must be at least 1")
    condition = _condition(connection, where)
    by_status: dict[str, int] = {}
    if totals:
        counted = select(sagas.c.status, func.count()).where(condition)
        if where.needs_step:
            counted = counted.select_from(_WITH_STEP)
        by_status = {
            status: count for status, count in connection.execute(counted.group_by(sagas.c.status))
        }
    key = tuple_(sagas.c.updated_at, sagas.c.id)
    query = _SUMMARY.where(condition)
    if where.oldest_first:
        query = query.order_by(sagas.c.updated_at, sagas.c.id)
        if after is not None:
            query = query.where(key > _cursor_tuple(after))
    else:
        query = query.order_by(sagas.c.updated_at.desc(), sagas.c.id.desc())
        if after is not None:
            query = query.where(key < _cursor_tuple(after))
    # One more than the page: whether a next page exists, without another count.
    rows = connection.execute(query.limit(limit + 1)).all()
    summaries = [_summary(r) for r in rows[:limit]]
    following = summaries[-1].cursor if len(rows) > limit else None
    total = sum(by_status.values()) if totals else -1
    return SagaPage(summaries, total, by_status, following)


def count_matching(connection: Connection, where: SagaFilter, *, at_most: int) -> int:
    """How many sagas `where` selects, counting no further than `at_most` + 1: a
    list's "10,000+ match" costs the same at a million sagas as at ten thousand."""
    query = select(sagas.c.id)
    if where.needs_step:
        query = query.select_from(_WITH_STEP)
    inner = query.where(_condition(connection, where)).limit(at_most + 1).subquery()
    return int(connection.execute(select(func.count()).select_from(inner)).scalar_one())


def summaries(connection: Connection, ids: Sequence[str]) -> dict[str, SagaSummary]:
    """The sagas with these ids (those that exist), in one statement."""
    if not ids:
        return {}
    rows = connection.execute(_SUMMARY.where(sagas.c.id.in_(list(ids))))
    return {row.id: _summary(row) for row in rows}


def matching_ids(connection: Connection, where: SagaFilter, *, at_most: int) -> list[str]:
    """The ids `where` selects now, oldest progress first; BadFilter past `at_most`."""
    query = select(sagas.c.id)
    if where.needs_step:
        query = query.select_from(_WITH_STEP)
    rows = connection.execute(
        query.where(_condition(connection, where))
        .order_by(sagas.c.updated_at, sagas.c.id)
        .limit(at_most + 1)
    ).all()
    if len(rows) > at_most:
        raise BadFilter(f"the filter selects more than {at_most} sagas; narrow it")
    return [r.id for r in rows]


def _cursor_tuple(after: Cursor) -> Any:
    return tuple_(literal(after.updated_at, UtcDateTime()), literal(after.saga_id, String(36)))


def _condition(connection: Connection, where: SagaFilter) -> ColumnElement[bool]:
    parts: list[ColumnElement[bool]] = []
    if where.ids:
        parts.append(sagas.c.id.in_(list(where.ids)))
    if where.statuses:
        parts.append(sagas.c.status.in_(list(where.statuses)))
    if where.name is not None:
        parts.append(sagas.c.name == where.name)
    if where.idempotency_key is not None:
        parts.append(sagas.c.idempotency_key == where.idempotency_key)
    if where.older_than is not None:
        parts.append(sagas.c.updated_at < where.older_than)
    if where.step is not None:
        parts.append(saga_steps.c.name == where.step)
    if where.waiting_for_ledger:
        parts.append(saga_steps.c.waiting_since.is_not(None))
        parts.append(sagas.c.status.in_(("running", "compensating")))
    if where.error is not None:
        escaped = where.error.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        parts.append(
            or_(
                sagas.c.reason.ilike(pattern, escape="\\"),
                saga_steps.c.last_error.ilike(pattern, escape="\\"),
            )
        )
    postgres = connection.dialect.name == "postgresql"
    for field in where.inputs:
        parts.append(_pg_input(field) if postgres else _sqlite_input(field))
    return and_(true(), *parts)


def _pg_input(field: InputField) -> ColumnElement[bool]:
    names = field.path.split(".")

    def nested(value: Any) -> dict[str, Any]:
        for name in reversed(names):
            value = {name: value}
        return value

    return or_(*(sagas.c.input.op("@>")(literal(nested(v), JSONB())) for v in field.candidates()))


def _sqlite_input(field: InputField) -> ColumnElement[bool]:
    path = "$" + "".join(f'."{name}"' for name in field.path.split("."))
    extracted = func.json_extract(sagas.c.input, path)
    kind = func.json_type(sagas.c.input, path)
    options: list[ColumnElement[bool]] = []
    for value in field.candidates():
        if value is None:
            options.append(kind == "null")
        elif isinstance(value, bool):
            options.append(kind == ("true" if value else "false"))
        elif isinstance(value, str):
            options.append(and_(kind == "text", extracted == value))
        else:
            options.append(and_(kind.in_(("integer", "real")), extracted == value))
    return or_(*options)


def _summary(row: Row[Any] | Any) -> SagaSummary:
    return SagaSummary(
        saga_id=row.id,
        name=row.name,
        version=row.version,
        status=SagaStatus(row.status),
        reason=row.reason,
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
        updated_at=row.updated_at,
        step=row.step,
        step_status=StepStatus(row.step_status) if row.step_status else None,
        attempts=row.attempts or 0,
        compensation_attempts=row.compensation_attempts or 0,
        waiting_since=row.waiting_since,
    )


__all__ = [
    "BadFilter",
    "Cursor",
    "InputField",
    "SagaFilter",
    "SagaPage",
    "SagaSummary",
    "count_matching",
    "matching_ids",
    "search",
    "summaries",
]
