"""One database transaction: saga state, outbox, inbox, history and business writes.

Everything goes through one SQLAlchemy `Session` on one connection. A local step
gets that session (`uow.session`), so its business writes commit or roll back
together with the record that the step ran and the messages it sends on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from saga.ports import StoreUnavailable
from saga.store.errors import (
    TRANSIENT_ERRORS,
    duplicate_key,
    is_duplicate_idempotency_key,
    is_transient,
    unavailable,
)
from saga.store.history import SqlHistory
from saga.store.inbox import SqlInbox
from saga.store.outbox import SqlOutbox
from saga.store.repository import SqlSagaRepository


class StepEndedTransaction(RuntimeError):
    """Code given `uow.session` committed or rolled back the unit of work's transaction."""


class SqlUnitOfWork:
    """UnitOfWork over an engine; rolls back on exit unless commit() was called.

    Errors meaning "database unreachable" leave it as StoreUnavailable (at
    `with`, at commit, and when one escapes the block), with the driver's error
    as the cause.
    """

    sagas: SqlSagaRepository
    outbox: SqlOutbox
    inbox: SqlInbox
    history: SqlHistory
    session: Session

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._root: SessionTransaction | None = None
        self._open = False
        self._committing = False

    def __enter__(self) -> SqlUnitOfWork:
        if self._open:
            raise RuntimeError("this unit of work is already open; make a new one")
        self.session = Session(self._engine, expire_on_commit=False)
        event.listen(self.session, "before_commit", self._guard_commit)
        try:
            self._begin()
            # Connect now: an unreachable database fails the `with` itself, and on
            # SQLite the write lock (BEGIN IMMEDIATE) is held from here on.
            self.session.connection()
        except BaseException as exc:
            self.session.close()
            if is_transient(exc):
                raise unavailable(exc) from exc
            raise
        self._open = True
        return self

    def _begin(self) -> None:
        # Lazy: the session connects at the first statement of this transaction.
        self._root = self.session.begin()
        self.sagas = SqlSagaRepository(self.session)
        self.outbox = SqlOutbox(self.session)
        self.inbox = SqlInbox(self.session)
        self.history = SqlHistory(self.session)

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.rollback()
        finally:
            self.session.close()
            self._root = None
            self._open = False
        if exc is not None and is_transient(exc) and not isinstance(exc, StoreUnavailable):
            raise unavailable(exc) from exc

    def commit(self) -> None:
        root = self._root
        if not self._open or root is None:
            raise RuntimeError("commit() outside the unit of work's `with` block")
        if self.session.get_transaction() is not root or not root.is_active:
            raise StepEndedTransaction(
                "the transaction was committed or rolled back through uow.session; "
                "nothing of this unit of work is kept (only the unit of work may end it)"
            )
        self._committing = True
        try:
            root.commit()
        except IntegrityError as exc:
            if is_duplicate_idempotency_key(exc):
                raise duplicate_key(exc) from exc
            raise
        except TRANSIENT_ERRORS as exc:
            # The commit may or may not have reached the database; the message is
            # delivered again and the inbox tells which.
            raise unavailable(exc) from exc
        finally:
            self._committing = False
        # The unit of work stays usable: a new transaction begins on next use.
        self._begin()

    def rollback(self) -> None:
        try:
            self.session.rollback()
        except TRANSIENT_ERRORS:
            # A lost connection took the transaction with it: nothing to undo.
            self.session.close()

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested transaction (SAVEPOINT): rolled back alone if the block raises."""
        return self._savepoint()

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        nested = self.session.begin_nested()
        try:
            yield
        except BaseException:
            if nested.is_active:
                # On a lost connection the block's own error is the one to report.
                with suppress(*TRANSIENT_ERRORS):
                    nested.rollback()
            raise
        # Flushes ORM objects the block added, so their errors belong to the block.
        nested.commit()

    def _guard_commit(self, session: Session) -> None:
        if not self._committing:
            raise StepEndedTransaction(
                "a step must not commit uow.session; the unit of work commits the step's "
                "writes together with the saga's state and its outgoing messages"
            )


class SqlUnitOfWorkFactory:
    """UnitOfWorkFactory: `SqlUnitOfWorkFactory(engine)()` is a fresh unit of work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()
