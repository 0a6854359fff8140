"""Ledger attempts of chain steps, one row per transaction id, every txid kept."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from saga.adapters.sql.clock import as_utc, now
from saga.adapters.sql.tables import ledger_attempts, sagas
from saga.core.chain import AttemptState
from saga.core.state import SagaStatus
from saga.ports.store import LedgerAttemptRecord

_COMMITTED = str(AttemptState.COMMITTED)
_TERMINAL = tuple(str(s) for s in SagaStatus if s.terminal)
# Read at every verify pass of a chain step (twice per task that prepares): built once
# and sent on the connection, not re-planned through the ORM session on each call.
_FOR_STEP = (
    select(ledger_attempts)
    .where(
        ledger_attempts.c.saga_id == bindparam("saga_id"),
        ledger_attempts.c.step == bindparam("step"),
        ledger_attempts.c.purpose == bindparam("purpose"),
    )
    .order_by(ledger_attempts.c.id)
)


class SqlLedgerAttempts:
    """LedgerAttempts over a unit of work's session."""

    def __init__(
        self, session: Session, connection: Callable[[], Connection] | None = None
    ) -> None:
        self._session = session
        # The chain step's statements go on the connection (as the inbox's and the
        # saga repository's do), skipping the ORM session's per-call work.
        self._conn = connection or session.connection

    def for_step(self, saga_id: str, step: str, purpose: str) -> list[LedgerAttemptRecord]:
        rows = self._conn().execute(
            _FOR_STEP, {"saga_id": saga_id, "step": step, "purpose": purpose}
        )
        return [_record(r) for r in rows]

    def for_saga(self, saga_id: str) -> list[LedgerAttemptRecord]:
        rows = self._session.execute(
            select(ledger_attempts)
            .where(ledger_attempts.c.saga_id == saga_id)
            .order_by(ledger_attempts.c.id)
        )
        return [_record(r) for r in rows]

    def add(self, record: LedgerAttemptRecord) -> None:
        dialect = self._session.get_bind().dialect
        self._conn().execute(
            insert(ledger_attempts).values(
                saga_id=record.saga_id,
                step=record.step,
                purpose=record.purpose,
                txid=record.txid,
                channel=record.channel,
                envelope=record.envelope,
                state=str(record.state),
                code=record.code,
                block=record.block,
                created_at=record.created_at or now(dialect),
                submitted_at=record.submitted_at,
                committed_at=record.committed_at,
                worker=record.worker,
            )
        )

    def mark_submitted(self, txid: str) -> None:
        dialect = self._session.get_bind().dialect
        self._conn().execute(
            update(ledger_attempts)
            .where(
                ledger_attempts.c.txid == txid,
                ledger_attempts.c.state == str(AttemptState.PREPARED),
            )
            .values(state=str(AttemptState.SUBMITTED), submitted_at=now(dialect))
        )

    def mark_committed(self, txid: str, code: int, block: int | None) -> bool:
        dialect = self._session.get_bind().dialect
        result = self._conn().execute(
            update(ledger_attempts)
            .where(ledger_attempts.c.txid == txid, ledger_attempts.c.state != _COMMITTED)
            .values(state=_COMMITTED, code=code, block=block, committed_at=now(dialect))
        )
        return bool(result.rowcount)

    def unsettled(
        self, *, limit: int, older_than: datetime | None = None
    ) -> list[LedgerAttemptRecord]:
        query = select(ledger_attempts).where(ledger_attempts.c.state != _COMMITTED)
        if older_than is not None:
            query = query.where(ledger_attempts.c.created_at < as_utc(older_than))
        rows = self._session.execute(query.order_by(ledger_attempts.c.created_at).limit(limit))
        return [_record(r) for r in rows]

    def unsettled_of_terminal_sagas(
        self, *, older_than: datetime, limit: int
    ) -> list[LedgerAttemptRecord]:
        # The partial index ix_ledger_attempts_unsettled holds only unsettled rows.
        rows = self._session.execute(
            select(ledger_attempts)
            .join(sagas, sagas.c.id == ledger_attempts.c.saga_id)
            .where(
                ledger_attempts.c.state != _COMMITTED,
                ledger_attempts.c.created_at < as_utc(older_than),
                sagas.c.status.in_(_TERMINAL),
            )
            .order_by(ledger_attempts.c.created_at)
            .limit(limit)
        )
        return [_record(r) for r in rows]

    def count_unsettled(self) -> dict[str, int]:
        rows = self._session.execute(
            select(ledger_attempts.c.state, func.count())
            .where(ledger_attempts.c.state != _COMMITTED)
            .group_by(ledger_attempts.c.state)
        )
        return {str(state): int(n) for state, n in rows}

    def envelopes(self) -> list[tuple[str, bytes]]:
        rows = self._session.execute(select(ledger_attempts.c.txid, ledger_attempts.c.envelope))
        return [(str(txid), bytes(envelope)) for txid, envelope in rows]


def _record(row: Row[Any]) -> LedgerAttemptRecord:
    return LedgerAttemptRecord(
        saga_id=row.saga_id,
        step=row.step,
        purpose=row.purpose,
        txid=row.txid,
        channel=row.channel,
        envelope=bytes(row.envelope),
        state=AttemptState(row.state),
        code=row.code,
        block=row.block,
        created_at=row.created_at,
        submitted_at=row.submitted_at,
        committed_at=row.committed_at,
        worker=row.worker,
    )
