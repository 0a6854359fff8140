"""Sagas and their steps, stored as one row per saga plus one row per step."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from saga.adapters.sql.clock import utcnow
from saga.adapters.sql.errors import duplicate_key, is_duplicate_idempotency_key
from saga.adapters.sql.history import SqlHistory
from saga.adapters.sql.outbox import SqlOutbox
from saga.adapters.sql.saga_start import start as start_saga
from saga.adapters.sql.tables import outbox, saga_steps, sagas
from saga.core.state import SagaState, SagaStatus, StepState, StepStatus
from saga.ports.store import DuplicateIdempotencyKey, HistoryEntry, OutboxMessage, SagaRecord


class SqlSagaRepository:
    """SagaRepository over a unit of work's session."""

    def __init__(
        self, session: Session, connection: Callable[[], Connection] | None = None
    ) -> None:
        self._session = session
        # The hot statements (a step's lock, read and save) go through Core.
        self._conn = connection or session.connection
        # Step rows as last read or written in this transaction: save() then
        # updates only the steps that changed, usually one per transition.
        self._known: dict[str, tuple[StepState, ...]] = {}

    def add(self, record: SagaRecord) -> None:
        state = record.state
        now = utcnow()
        values = _saga_values(record, now)
        values["id"] = state.saga_id
        values["created_at"] = record.created_at or now
        if record.idempotency_key is None:
            self._insert(values, state, now)
            return
        # In a savepoint so that, on PostgreSQL as on SQLite, the transaction
        # stays usable after the violation (a caller may look up the winner).
        try:
            with self._session.begin_nested():
                self._insert(values, state, now)
        except IntegrityError as exc:
            if is_duplicate_idempotency_key(exc):
                raise duplicate_key(exc) from exc
            raise

    def start(
        self,
        record: SagaRecord,
        messages: Sequence[OutboxMessage],
        notes: Sequence[HistoryEntry],
    ) -> None:
        if self._session.get_bind().dialect.name != "postgresql":
            self.add(record)
            outbox, history = SqlOutbox(self._session, self._conn), SqlHistory(self._session)
            for message in messages:
                outbox.add(message)
            history.add_many(notes)
            return
        now = utcnow()
        record = replace(
            record, created_at=record.created_at or now, updated_at=record.updated_at or now
        )
        if not start_saga(self._conn(), record, messages, notes):
            raise DuplicateIdempotencyKey("another saga already holds this idempotency key")
        self._known[record.saga_id] = record.state.steps

    def _insert(self, values: dict[str, Any], state: SagaState, now: datetime) -> None:
        self._session.execute(_ADD_SAGA, values)
        self._session.execute(
            _ADD_STEPS,
            [_step_values(state.saga_id, i, step, now) for i, step in enumerate(state.steps)],
        )
        self._known[state.saga_id] = state.steps

    def get(self, saga_id: str, *, for_update: bool = False) -> SagaRecord | None:
        params = {"saga_id": saga_id}
        if for_update:
            saga = self._conn().execute(_LOCK, params).first()
            if saga is None:
                return None
            return self.locked(saga)
        else:
            rows = self._session.execute(_GET, params).all()
            if not rows:
                return None
            steps = [_step(row, prefix="step_") for row in rows if row.step_name is not None]
            record = _record(rows[0], steps)
        self._known[record.saga_id] = record.state.steps
        return record

    def locked(self, saga: Row[Any]) -> SagaRecord:
        """The saga whose row `saga` this transaction has just locked, with its steps.

        The steps are read after the lock, in a statement of their own: see _LOCK.
        """
        steps = [_step(row) for row in self._conn().execute(_STEPS, {"saga_id": saga.id})]
        record = _record(saga, steps)
        self._known[record.saga_id] = record.state.steps
        return record

    def by_idempotency_key(self, key: str) -> SagaRecord | None:
        row = self._session.execute(select(sagas).where(sagas.c.idempotency_key == key)).first()
        return None if row is None else self._records([row])[0]

    def save(self, record: SagaRecord) -> None:
        """Write what a transition changes: status, position, data, reason, changed steps.

        Name, version, input and idempotency key never change after add(), so they
        are not sent again (the input can be the largest column).
        """
        state = record.state
        now = utcnow()
        result = self._conn().execute(
            _SAVE_SAGA,
            {
                "b_id": state.saga_id,
                "status": str(state.status),
                "current": state.current,
                "data": record.data,
                "reason": state.reason,
                "updated_at": record.updated_at or now,
            },
        )
        if result.rowcount != 1:
            raise KeyError(f"no saga {state.saga_id!r} to save; add() it first")
        before = self._known.get(state.saga_id)
        changed = []
        for i, step in enumerate(state.steps):
            if before is not None and i < len(before) and before[i] == step:
                continue
            values = _step_values(state.saga_id, i, step, now)
            values["b_saga_id"], values["b_idx"] = values.pop("saga_id"), values.pop("idx")
            changed.append(values)
        if changed:
            # One executemany for the changed steps (a transition usually ends one
            # step and starts the next): psycopg 3 pipelines it, one round trip.
            self._conn().execute(_SAVE_STEPS, changed)
        self._known[state.saga_id] = state.steps

    def list(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        older_than: datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[SagaRecord]:
        """Newest first; with `older_than` (a sweep for stuck sagas) oldest first."""
        query = select(sagas)
        if status is not None:
            query = query.where(sagas.c.status == status)
        if name is not None:
            query = query.where(sagas.c.name == name)
        if older_than is not None:
            query = query.where(sagas.c.updated_at < older_than).order_by(
                sagas.c.updated_at, sagas.c.id
            )
        else:
            query = query.order_by(sagas.c.updated_at.desc(), sagas.c.id)
        rows = self._session.execute(query.limit(limit)).all()
        return self._records(rows)

    def count_by_status(self) -> dict[tuple[str, str], int]:
        """Sagas per (name, status)."""
        rows = self._session.execute(
            select(sagas.c.name, sagas.c.status, func.count()).group_by(
                sagas.c.name, sagas.c.status
            )
        )
        return {(name, status): count for name, status, count in rows}

    def count_waiting_for_ledger(self) -> dict[str, int]:
        # Through the partial index ix_saga_steps_waiting: only waiting steps are in it.
        rows = self._session.execute(
            select(sagas.c.name, func.count())
            .select_from(saga_steps.join(sagas, sagas.c.id == saga_steps.c.saga_id))
            .where(
                saga_steps.c.waiting_since.is_not(None),
                sagas.c.status.in_(("running", "compensating")),
            )
            .group_by(sagas.c.name)
        )
        return {name: count for name, count in rows}

    def ids(self, *, created_since: datetime | None = None) -> builtins.list[str]:
        query = select(sagas.c.id).order_by(sagas.c.created_at, sagas.c.id)
        if created_since is not None:
            query = query.where(sagas.c.created_at >= created_since)
        return [str(row[0]) for row in self._session.execute(query)]

    def idle(self, *, updated_before: datetime, limit: int) -> builtins.list[str]:
        rows = self._session.execute(idle_sagas_query(updated_before, limit))
        return [str(row[0]) for row in rows]

    def _records(self, rows: Sequence[Row[Any]]) -> builtins.list[SagaRecord]:
        if not rows:
            return []
        ids = [row.id for row in rows]
        steps: dict[str, builtins.list[StepState]] = {saga_id: [] for saga_id in ids}
        for step in self._session.execute(
            select(saga_steps)
            .where(saga_steps.c.saga_id.in_(ids))
            .order_by(saga_steps.c.saga_id, saga_steps.c.idx)
        ):
            steps[step.saga_id].append(_step(step))
        records = [_record(row, steps[row.id]) for row in rows]
        for record in records:
            self._known[record.saga_id] = record.state.steps
        return records


_STEP_FIELDS = (
    "name",
    "status",
    "attempts",
    "failures",
    "compensation_attempts",
    "compensation_failures",
    "last_error",
    "waiting_since",
)
_STEP_COLUMNS = tuple(saga_steps.c[name].label(f"step_{name}") for name in _STEP_FIELDS)

# The statements on every step's path, built once: building and cache-keying a
# construct per call was a third of the worker's Python time per step.
_GET = (
    select(sagas, *_STEP_COLUMNS)
    .outerjoin(saga_steps, saga_steps.c.saga_id == sagas.c.id)
    .where(sagas.c.id == bindparam("saga_id"))
    .order_by(saga_steps.c.idx)
)
# PostgreSQL: a row lock on the saga until the transaction ends (its steps change
# only under it); the locked row comes back as the last holder committed it. The
# steps are read by a statement of their own after it, never joined into it
# (`... FOR UPDATE OF sagas`): a statement that waited for the lock re-reads only
# the locked row once the holder commits (EvalPlanQual) and would return the
# joined step rows as they were before, so a redelivered or re-driven message
# could pass its awaits() check on stale steps. A new statement, a new snapshot.
# SQLite ignores the clause, and needs none: the engine's BEGIN IMMEDIATE already
# holds the database's write lock (see saga.adapters.sql.engine).
_LOCK = select(sagas).where(sagas.c.id == bindparam("saga_id")).with_for_update()
_STEPS = (
    select(*(saga_steps.c[name] for name in _STEP_FIELDS))
    .where(saga_steps.c.saga_id == bindparam("saga_id"))
    .order_by(saga_steps.c.idx)
)
# INSERT's columns and UPDATE's SET are the ones the parameters name.
_ADD_SAGA = insert(sagas)
_ADD_STEPS = insert(saga_steps)
_SAVE_SAGA = update(sagas).where(sagas.c.id == bindparam("b_id"))
_SAVE_STEPS = update(saga_steps).where(
    saga_steps.c.saga_id == bindparam("b_saga_id"), saga_steps.c.idx == bindparam("b_idx")
)


def idle_sagas_query(updated_before: datetime, limit: int) -> Any:
    """`SagaRepository.idle`: running/compensating sagas idle since before the cutoff,
    with nothing in the outbox.

    PostgreSQL plan (tests/integration/test_sweeper_store.py shows it): a bitmap
    index scan on ix_sagas_status_updated_at for both statuses, so terminal sagas
    are never read, and an anti-join against the saga's unpublished outbox rows
    (ix_outbox_saga_id).
    """
    pending = exists().where(and_(outbox.c.saga_id == sagas.c.id, outbox.c.published_at.is_(None)))
    return (
        select(sagas.c.id)
        .where(sagas.c.status.in_(_ACTIVE), sagas.c.updated_at < updated_before, ~pending)
        .order_by(sagas.c.updated_at)
        .limit(limit)
    )


_ACTIVE = (str(SagaStatus.RUNNING), str(SagaStatus.COMPENSATING))


def _step(row: Row[Any], prefix: str = "") -> StepState:
    m = row._mapping
    return StepState(
        name=m[f"{prefix}name"],
        status=StepStatus(m[f"{prefix}status"]),
        attempts=m[f"{prefix}attempts"],
        failures=m[f"{prefix}failures"],
        compensation_attempts=m[f"{prefix}compensation_attempts"],
        compensation_failures=m[f"{prefix}compensation_failures"],
        last_error=m[f"{prefix}last_error"],
        waiting_since=m[f"{prefix}waiting_since"],
    )


def _record(row: Row[Any], steps: Iterable[StepState]) -> SagaRecord:
    return SagaRecord(
        state=SagaState(
            saga_id=row.id,
            name=row.name,
            version=row.version,
            status=SagaStatus(row.status),
            current=row.current,
            steps=tuple(steps),
            reason=row.reason,
        ),
        input=row.input,
        data=row.data,
        idempotency_key=row.idempotency_key,
        payload_hash=row.payload_hash,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _saga_values(record: SagaRecord, now: datetime) -> dict[str, Any]:
    state = record.state
    return {
        "name": state.name,
        "version": state.version,
        "status": str(state.status),
        "current": state.current,
        "input": record.input,
        "data": record.data,
        "reason": state.reason,
        "idempotency_key": record.idempotency_key,
        "payload_hash": record.payload_hash,
        "updated_at": record.updated_at or now,
    }


def _step_values(saga_id: str, idx: int, step: StepState, now: datetime) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "idx": idx,
        "name": step.name,
        "status": str(step.status),
        "attempts": step.attempts,
        "failures": step.failures,
        "compensation_attempts": step.compensation_attempts,
        "compensation_failures": step.compensation_failures,
        "last_error": step.last_error,
        "waiting_since": step.waiting_since,
        "updated_at": now,
    }
