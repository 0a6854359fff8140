"""Reading one saga with its history."""

from __future__ import annotations

from saga.app.errors import SagaNotFound
from saga.ports.store import HistoryEntry, LedgerAttemptRecord, SagaRecord, UnitOfWorkFactory


class SagaReader:
    def __init__(self, uow_factory: UnitOfWorkFactory) -> None:
        self._uow = uow_factory

    def get(self, saga_id: str) -> tuple[SagaRecord, list[HistoryEntry]]:
        with self._uow() as uow:
            record = uow.sagas.get(saga_id)
            if record is None:
                raise SagaNotFound(saga_id)
            return record, uow.history.for_saga(saga_id)

    def ledger_attempts(self, saga_id: str) -> list[LedgerAttemptRecord]:
        """Every ledger transaction recorded for the saga's chain steps."""
        with self._uow() as uow:
            return uow.ledger_attempts.for_saga(saga_id)
