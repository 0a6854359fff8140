"""The store port: saga records, outbox, inbox, history and ledger attempts in one unit of work.

Adapters implement these (SQLAlchemy on PostgreSQL or SQLite, RabbitMQ through
aio-pika or kombu, ...). The fakes in tests/fakes.py implement them in memory.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Self

from saga.core.chain import AttemptState
from saga.core.errors import SagaError
from saga.core.state import SagaState
from saga.ports.broker import PendingMessage


class StoreUnavailable(SagaError):
    """The store cannot be reached or lost the connection; the work may be retried."""


class DuplicateIdempotencyKey(SagaError):
    """Another saga already holds this idempotency key (raised at commit or add)."""


@dataclass
class SagaRecord:
    """A saga as stored: the machine's state plus its input and accumulated data."""

    state: SagaState
    input: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    payload_hash: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def saga_id(self) -> str:
        return self.state.saga_id


@dataclass(frozen=True)
class OutboxMessage:
    """A message to publish once the transaction that wrote it has committed."""

    message_id: str
    saga_id: str
    body: dict[str, Any]
    # Seconds to wait before publishing (retry backoff); kept in the store, so a
    # delayed retry survives any restart.
    delay: float = 0.0


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    saga_id: str
    kind: str
    detail: dict[str, Any]
    actor: str | None = None


@dataclass(frozen=True)
class StepClaim:
    """What claiming a step message found (`UnitOfWork.claim_step`).

    `fresh` is False if the message was processed before (then nothing else was
    done); otherwise `record` is the saga, locked until the transaction ends, or
    None if there is no such saga.
    """

    fresh: bool
    record: SagaRecord | None = None


@dataclass(frozen=True)
class LedgerAttemptRecord:
    """One ledger transaction of a chain step (purpose "do") or its compensation ("undo").

    Written in state PREPARED, with the signed envelope, in a transaction that
    commits before the envelope is submitted; every txid of a step is kept.
    """

    saga_id: str
    step: str
    purpose: str
    txid: str
    channel: str
    envelope: bytes
    state: AttemptState
    code: int | None = None
    block: int | None = None
    created_at: datetime | None = None
    submitted_at: datetime | None = None
    committed_at: datetime | None = None
    # The worker host that prepared it, for operators reading `saga show`.
    worker: str | None = None


class LedgerAttempts(Protocol):
    def for_step(self, saga_id: str, step: str, purpose: str) -> list[LedgerAttemptRecord]:
        """Every attempt of one step and purpose, oldest first."""
        ...

    def for_saga(self, saga_id: str) -> list[LedgerAttemptRecord]: ...

    def add(self, record: LedgerAttemptRecord) -> None: ...

    def mark_submitted(self, txid: str) -> None:
        """PREPARED -> SUBMITTED; a committed attempt stays committed."""
        ...

    def mark_committed(self, txid: str, code: int, block: int | None) -> bool:
        """Record the final code; False if it was already recorded (first answer wins)."""
        ...

    def unsettled(
        self, *, limit: int, older_than: datetime | None = None
    ) -> list[LedgerAttemptRecord]:
        """Attempts not yet COMMITTED, oldest first (the watcher's and sweeper's work)."""
        ...

    def unsettled_of_terminal_sagas(
        self, *, older_than: datetime, limit: int
    ) -> list[LedgerAttemptRecord]:
        """Attempts not yet COMMITTED, created before `older_than`, whose saga is terminal.

        Oldest first; the sweeper asks the ledger about these once more.
        """
        ...

    def count_unsettled(self) -> dict[str, int]:
        """Attempts not yet COMMITTED, counted by state ("prepared", "submitted")."""
        ...

    def envelopes(self) -> list[tuple[str, bytes]]:
        """(txid, signed envelope) of every attempt recorded, any state (the audit's keys)."""
        ...


class SagaRepository(Protocol):
    def add(self, record: SagaRecord) -> None: ...

    def start(
        self,
        record: SagaRecord,
        messages: Sequence[OutboxMessage],
        notes: Sequence[HistoryEntry],
    ) -> None:
        """`add` the saga, then `outbox.add` its first messages and `history.add` its
        notes, in as few round trips as the store can (one statement on PostgreSQL).

        Raises DuplicateIdempotencyKey, with nothing written, if another saga
        holds the record's key (here, or at commit for a concurrent one).
        """
        ...

    def get(self, saga_id: str, *, for_update: bool = False) -> SagaRecord | None: ...

    def by_idempotency_key(self, key: str) -> SagaRecord | None: ...

    def save(self, record: SagaRecord) -> None: ...

    def list(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        older_than: datetime | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]: ...

    def count_by_status(self) -> dict[tuple[str, str], int]: ...

    def count_waiting_for_ledger(self) -> dict[str, int]:
        """Running or compensating sagas whose current step waits for the ledger, by saga name."""
        ...

    def ids(self, *, created_since: datetime | None = None) -> builtins.list[str]:
        """Ids of every saga (created at or after `created_since`), oldest created first."""
        ...

    def idle(self, *, updated_before: datetime, limit: int) -> builtins.list[str]:
        """Running or compensating sagas the sweeper may have to look at.

        Ids of those last updated before `updated_before` that have no unpublished
        outbox row (a message on its way is not a lost one), least recently
        updated first, at most `limit`.
        """
        ...


class Outbox(Protocol):
    def add(self, message: OutboxMessage) -> None: ...

    def take(self, message_id: str) -> None:
        """Mark a message this transaction handles itself as published; the relay skips it."""
        ...

    def release(self, message_id: str) -> None:
        """Make a held-back, unpublished message due now."""
        ...

    def oldest_unpublished_age(self) -> float | None:
        """Seconds the oldest due, unpublished message has waited, by the store's clock.

        None if none waits. A delayed message counts from when it became due.
        """
        ...

    def count_unpublished(self) -> int:
        """Messages not yet published, due or not."""
        ...


class Inbox(Protocol):
    def seen(self, message_id: str) -> bool: ...

    def claim(self, message_id: str, saga_id: str) -> bool:
        """`record` unless `seen`, in one step: False if the message was processed before.

        A concurrent claim of the same id waits until this transaction ends.
        """
        ...

    def record(self, message_id: str, saga_id: str) -> None: ...


class History(Protocol):
    def add(self, entry: HistoryEntry) -> None: ...

    def add_many(self, entries: Sequence[HistoryEntry]) -> None:
        """`add` each, in order, in as few round trips as the store can."""
        ...

    def for_saga(self, saga_id: str) -> list[HistoryEntry]: ...


class UnitOfWork(Protocol):
    """One database transaction; rolls back on exit unless commit() was called."""

    # Read-only in the protocol so adapters may hold their own concrete types.
    @property
    def sagas(self) -> SagaRepository: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def inbox(self) -> Inbox: ...

    @property
    def history(self) -> History: ...

    @property
    def ledger_attempts(self) -> LedgerAttempts: ...

    def claim_step(self, message_id: str, saga_id: str, *, take: bool = False) -> StepClaim:
        """Claim a step message in the inbox and lock its saga, for the step to run.

        `inbox.claim`, then (if fresh) `outbox.take` when `take` and
        `sagas.get(for_update=True)`, in as few round trips as the store can
        (one statement and the steps' read on PostgreSQL). The claim commits or
        rolls back with the step.
        """
        ...

    def step_session(self) -> AbstractContextManager[Any]:
        """The transaction's session, for a local step's business writes (its StepContext).

        Leaving the block without an error sends the step's pending writes, so
        their errors are the step's own; the unit of work still ends the
        transaction.
        """
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object, /) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> UnitOfWork: ...


class SagaStarts(Protocol):
    """Starting a saga in a transaction of its own (the enqueue)."""

    def __call__(
        self,
        record: SagaRecord,
        messages: Sequence[OutboxMessage],
        notes: Sequence[HistoryEntry],
    ) -> None:
        """`SagaRepository.start` and commit, in as few round trips as the store can
        (PostgreSQL: the one statement, autocommitted: one round trip).

        Raises DuplicateIdempotencyKey, with nothing written, if another saga
        holds the record's key; StoreUnavailable if the store cannot be reached.
        """
        ...


class OutboxReader(Protocol):
    """The relay's view of the outbox."""

    def claim(self, limit: int) -> AbstractContextManager[Sequence[PendingMessage]]:
        """Lock up to `limit` publishable rows, oldest first, for this caller only.

        Rows stay locked until the context exits; `mark_published` inside it marks
        them in the same transaction.
        """
        ...

    def mark_published(self, ids: Sequence[int]) -> None: ...

    def oldest_unpublished_age(self) -> float | None: ...

    def wait_for_rows(self, timeout: float) -> bool:
        """Block until new rows may be publishable (True) or `timeout` passes (False).

        Only a wake-up call, never a promise: the claim still decides. A reader
        that cannot hear commits sleeps out the timeout and says False.
        """
        ...

    def close(self) -> None:
        """Release what the reader holds (a listening connection); it may be used again."""
        ...
