"""SagaStarts for the SQL store: the enqueue in one round trip on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from saga.adapters.sql.clock import utcnow
from saga.adapters.sql.errors import is_transient, unavailable
from saga.adapters.sql.saga_start import start
from saga.adapters.sql.unit_of_work import SqlUnitOfWork
from saga.app.starting import StartInUnitOfWork
from saga.ports.store import (
    DuplicateIdempotencyKey,
    HistoryEntry,
    OutboxMessage,
    SagaRecord,
    SagaStarts,
)


class SqlSagaStarts:
    """On PostgreSQL the one statement of saga_start alone, autocommitted: one round
    trip where BEGIN, statement and COMMIT took three. Elsewhere a unit of work."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._in_unit_of_work = StartInUnitOfWork(lambda: SqlUnitOfWork(engine))

    def __call__(
        self,
        record: SagaRecord,
        messages: Sequence[OutboxMessage],
        notes: Sequence[HistoryEntry],
    ) -> None:
        if self._engine.dialect.name != "postgresql":
            self._in_unit_of_work(record, messages, notes)
            return
        now = utcnow()
        record = replace(
            record, created_at=record.created_at or now, updated_at=record.updated_at or now
        )
        try:
            # One statement is one transaction: all of it commits, or none of it.
            with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                started = start(c, record, messages, notes)
        except Exception as exc:
            if is_transient(exc):
                raise unavailable(exc) from exc
            raise
        if not started:
            raise DuplicateIdempotencyKey("another saga already holds this idempotency key")


if TYPE_CHECKING:
    _port: SagaStarts = SqlSagaStarts(Engine.__new__(Engine))
