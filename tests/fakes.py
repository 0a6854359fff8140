"""In-memory fakes of the ports in saga/ports/store.py.

They keep state (they are not mocks): a `FakeDatabase` holds what is committed;
each `FakeUnitOfWork` works on a private copy of it and publishes that copy only
on `commit()`, so anything not committed is gone when the block exits, exactly
like a database transaction.

Business steps in tests write through `ctx.session` (a `FakeSession`, the unit of
work's `step_session()`; tests may use `uow.session` directly) into named
tables of the same working copy, so their writes commit or roll back together
with the saga's state, the inbox record and the outbox rows.

Faults: `FakeDatabase.fail_commits` makes the next N commits raise
`StoreUnavailable` (nothing of the transaction is kept), `fail_begin` does the
same when a unit of work is opened.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from saga.core.chain import AttemptState
from saga.core.state import SagaStatus
from saga.ports.broker import PendingMessage
from saga.ports.ledger import (
    DUPLICATE_TXID,
    MVCC_READ_CONFLICT,
    VALID,
    Arg,
    CommitResult,
    EndorseFailed,
    EvaluateFailed,
    LedgerError,
    PreparedTx,
    StatusUnknown,
    SubmitFailed,
    Submitted,
)
from saga.ports.store import (
    DuplicateIdempotencyKey,
    HistoryEntry,
    LedgerAttemptRecord,
    OutboxMessage,
    SagaRecord,
    StepClaim,
    StoreUnavailable,
)

_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass
class OutboxRow:
    id: int
    message: OutboxMessage
    published: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # When it is due (created_at plus its delay; `release` makes it now). The fake
    # relay does not wait for it: unit tests drive retries without a clock.
    available_at: datetime | None = None

    @property
    def due_at(self) -> datetime:
        return self.available_at or self.created_at


@dataclass
class Tables:
    """Everything a transaction can see and change (copied per transaction)."""

    sagas: dict[str, SagaRecord] = field(default_factory=dict)
    outbox: list[OutboxRow] = field(default_factory=list)
    inbox: dict[str, str] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    business: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ledger_attempts: list[LedgerAttemptRecord] = field(default_factory=list)
    next_outbox_id: int = 1


class FakeDatabase:
    """The committed state, shared by every unit of work made from it."""

    def __init__(self) -> None:
        self.tables = Tables()
        self.commits = 0
        self.rollbacks = 0
        self.fail_commits = 0
        self.fail_begin = 0

    # Reading committed state, for assertions.
    def business_rows(self, table: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.tables.business.get(table, []))

    def saga(self, saga_id: str) -> SagaRecord | None:
        record = self.tables.sagas.get(saga_id)
        return copy.deepcopy(record)

    def attempts(self) -> list[LedgerAttemptRecord]:
        return list(self.tables.ledger_attempts)

    def outbox_messages(self) -> list[OutboxMessage]:
        return [row.message for row in self.tables.outbox]

    def snapshot(self) -> Tables:
        return copy.deepcopy(self.tables)

    def uow(self) -> FakeUnitOfWork:
        """Usable as the orchestrator's UnitOfWorkFactory: `Orchestrator(reg, db.uow)`."""
        return FakeUnitOfWork(self)


class FakeSession:
    """Where business steps in tests write their rows (a table is a list of dicts)."""

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def insert(self, table: str, **row: Any) -> None:
        self._uow._work().business.setdefault(table, []).append(dict(row))

    def rows(self, table: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self._uow._work().business.get(table, []))

    def flush(self) -> None:
        """Writes apply at once here; a SQLAlchemy session sends pending ORM rows."""


class FakeSagaRepository:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def add(self, record: SagaRecord) -> None:
        work = self._uow._work()
        if record.saga_id in work.sagas:
            raise ValueError(f"saga {record.saga_id} exists already")
        key = record.idempotency_key
        if key is not None and any(r.idempotency_key == key for r in work.sagas.values()):
            raise DuplicateIdempotencyKey(key)
        work.sagas[record.saga_id] = copy.deepcopy(record)

    def start(
        self,
        record: SagaRecord,
        messages: Sequence[OutboxMessage],
        notes: Sequence[HistoryEntry],
    ) -> None:
        self.add(record)
        for message in messages:
            self._uow.outbox.add(message)
        self._uow.history.add_many(notes)

    def get(self, saga_id: str, *, for_update: bool = False) -> SagaRecord | None:
        record = self._uow._work().sagas.get(saga_id)
        return copy.deepcopy(record)

    def by_idempotency_key(self, key: str) -> SagaRecord | None:
        for record in self._uow._work().sagas.values():
            if record.idempotency_key == key:
                return copy.deepcopy(record)
        return None

    def save(self, record: SagaRecord) -> None:
        work = self._uow._work()
        if record.saga_id not in work.sagas:
            raise KeyError(record.saga_id)
        work.sagas[record.saga_id] = copy.deepcopy(record)

    def list(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        older_than: datetime | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        found = [
            copy.deepcopy(r)
            for r in self._uow._work().sagas.values()
            if (status is None or r.state.status == status)
            and (name is None or r.state.name == name)
            and (older_than is None or (r.updated_at is not None and r.updated_at < older_than))
        ]
        # As the SQL store: newest first; with `older_than` (a sweep) oldest first.
        found.sort(key=lambda r: r.saga_id)
        found.sort(key=lambda r: r.updated_at or _EPOCH, reverse=older_than is None)
        return found[:limit]

    def count_by_status(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for r in self._uow._work().sagas.values():
            key = (r.state.name, str(r.state.status))
            counts[key] = counts.get(key, 0) + 1
        return counts

    def count_waiting_for_ledger(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._uow._work().sagas.values():
            state = r.state
            if state.status.terminal or state.steps[state.current].waiting_since is None:
                continue
            counts[state.name] = counts.get(state.name, 0) + 1
        return counts

    def ids(self, *, created_since: datetime | None = None) -> builtins.list[str]:
        records = [
            r
            for r in self._uow._work().sagas.values()
            if created_since is None or (r.created_at is not None and r.created_at >= created_since)
        ]
        records.sort(key=lambda r: (r.created_at or _EPOCH, r.saga_id))
        return [r.saga_id for r in records]

    def idle(self, *, updated_before: datetime, limit: int) -> builtins.list[str]:
        work = self._uow._work()
        pending = {row.message.saga_id for row in work.outbox if not row.published}
        found = [
            r
            for r in work.sagas.values()
            if r.state.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
            and r.updated_at is not None
            and r.updated_at < updated_before
            and r.saga_id not in pending
        ]
        found.sort(key=lambda r: r.updated_at or _EPOCH)
        return [r.saga_id for r in found[:limit]]


class FakeOutbox:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def add(self, message: OutboxMessage) -> None:
        work = self._uow._work()
        at = datetime.now(UTC)
        available = at + timedelta(seconds=max(message.delay, 0.0))
        work.outbox.append(
            OutboxRow(
                work.next_outbox_id, copy.deepcopy(message), created_at=at, available_at=available
            )
        )
        work.next_outbox_id += 1

    def take(self, message_id: str) -> None:
        for row in self._uow._work().outbox:
            if row.message.message_id == message_id:
                row.published = True

    def release(self, message_id: str) -> None:
        for row in self._uow._work().outbox:
            if row.message.message_id == message_id and not row.published:
                row.message = dataclasses.replace(row.message, delay=0.0)
                row.available_at = datetime.now(UTC)

    def oldest_unpublished_age(self) -> float | None:
        at = datetime.now(UTC)
        due = [r.due_at for r in self._uow._work().outbox if not r.published and r.due_at <= at]
        if not due:
            return None
        return max((at - min(due)).total_seconds(), 0.0)

    def count_unpublished(self) -> int:
        return sum(1 for r in self._uow._work().outbox if not r.published)


class FakeInbox:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def seen(self, message_id: str) -> bool:
        return message_id in self._uow._work().inbox

    def claim(self, message_id: str, saga_id: str) -> bool:
        if self.seen(message_id):
            return False
        self.record(message_id, saga_id)
        return True

    def record(self, message_id: str, saga_id: str) -> None:
        inbox = self._uow._work().inbox
        if message_id in inbox:
            # A real inbox has a primary key on message_id.
            raise StoreUnavailable(f"message {message_id} recorded twice")
        inbox[message_id] = saga_id


class FakeHistory:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def add(self, entry: HistoryEntry) -> None:
        self._uow._work().history.append(copy.deepcopy(entry))

    def add_many(self, entries: Sequence[HistoryEntry]) -> None:
        for entry in entries:
            self.add(entry)

    def for_saga(self, saga_id: str) -> list[HistoryEntry]:
        return [copy.deepcopy(e) for e in self._uow._work().history if e.saga_id == saga_id]


class DuplicateTxid(Exception):
    """The fake's unique index on ledger_attempts.txid."""


class FakeLedgerAttempts:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def for_step(self, saga_id: str, step: str, purpose: str) -> list[LedgerAttemptRecord]:
        return [
            r
            for r in self._uow._work().ledger_attempts
            if (r.saga_id, r.step, r.purpose) == (saga_id, step, purpose)
        ]

    def for_saga(self, saga_id: str) -> list[LedgerAttemptRecord]:
        return [r for r in self._uow._work().ledger_attempts if r.saga_id == saga_id]

    def add(self, record: LedgerAttemptRecord) -> None:
        rows = self._uow._work().ledger_attempts
        if any(r.txid == record.txid for r in rows):
            raise DuplicateTxid(record.txid)
        if record.created_at is None:
            record = replace(record, created_at=datetime.now(UTC))
        rows.append(record)

    def _update(self, txid: str, **changes: Any) -> bool:
        rows = self._uow._work().ledger_attempts
        for i, r in enumerate(rows):
            if r.txid == txid:
                rows[i] = replace(r, **changes)
                return True
        return False

    def mark_submitted(self, txid: str) -> None:
        for r in self.for_txid(txid):
            if r.state is AttemptState.PREPARED:
                self._update(txid, state=AttemptState.SUBMITTED, submitted_at=datetime.now(UTC))

    def mark_committed(self, txid: str, code: int, block: int | None) -> bool:
        for r in self.for_txid(txid):
            if r.state is not AttemptState.COMMITTED:
                return self._update(
                    txid,
                    state=AttemptState.COMMITTED,
                    code=code,
                    block=block,
                    committed_at=datetime.now(UTC),
                )
        return False

    def for_txid(self, txid: str) -> list[LedgerAttemptRecord]:
        return [r for r in self._uow._work().ledger_attempts if r.txid == txid]

    def unsettled(
        self, *, limit: int, older_than: datetime | None = None
    ) -> list[LedgerAttemptRecord]:
        found = [
            r
            for r in self._uow._work().ledger_attempts
            if r.state is not AttemptState.COMMITTED
            and (older_than is None or (r.created_at is not None and r.created_at < older_than))
        ]
        found.sort(key=lambda r: r.created_at or datetime.min.replace(tzinfo=UTC))
        return found[:limit]

    def unsettled_of_terminal_sagas(
        self, *, older_than: datetime, limit: int
    ) -> list[LedgerAttemptRecord]:
        sagas = self._uow._work().sagas
        terminal = {sid for sid, r in sagas.items() if r.state.status.terminal}
        return [
            r
            for r in self.unsettled(
                limit=len(self._uow._work().ledger_attempts), older_than=older_than
            )
            if r.saga_id in terminal
        ][:limit]

    def count_unsettled(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._uow._work().ledger_attempts:
            if r.state is not AttemptState.COMMITTED:
                counts[str(r.state)] = counts.get(str(r.state), 0) + 1
        return counts

    def envelopes(self) -> list[tuple[str, bytes]]:
        return [(r.txid, r.envelope) for r in self._uow._work().ledger_attempts]


class FakeUnitOfWork:
    """One transaction over a FakeDatabase; rolls back on exit unless committed."""

    def __init__(self, db: FakeDatabase) -> None:
        self.db = db
        self._tables: Tables | None = None
        self._open = False
        self._base_attempts: list[LedgerAttemptRecord] = []
        self.committed = False
        self.sagas = FakeSagaRepository(self)
        self.outbox = FakeOutbox(self)
        self.inbox = FakeInbox(self)
        self.history = FakeHistory(self)
        self.ledger_attempts = FakeLedgerAttempts(self)
        self.session = FakeSession(self)

    def claim_step(self, message_id: str, saga_id: str, *, take: bool = False) -> StepClaim:
        if not self.inbox.claim(message_id, saga_id):
            return StepClaim(fresh=False)
        if take:
            self.outbox.take(message_id)
        return StepClaim(fresh=True, record=self.sagas.get(saga_id, for_update=True))

    @contextmanager
    def step_session(self) -> Iterator[FakeSession]:
        yield self.session
        self.session.flush()

    def _work(self) -> Tables:
        if self._tables is None:
            if not self._open:
                raise RuntimeError("unit of work used outside its `with` block")
            # After a commit or rollback inside the block a new transaction
            # begins at the next use, as the SQL unit of work's does.
            self._begin()
        assert self._tables is not None
        return self._tables

    def _begin(self) -> None:
        self._tables = copy.deepcopy(self.db.tables)
        self._base_attempts = list(self._tables.ledger_attempts)

    def __enter__(self) -> FakeUnitOfWork:
        if self.db.fail_begin > 0:
            self.db.fail_begin -= 1
            raise StoreUnavailable("fake database: cannot connect (injected)")
        self._begin()
        self._open = True
        self.committed = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._open = False
        if self._tables is not None:
            self.rollback()

    def commit(self) -> None:
        work = self._work()
        if self.db.fail_commits > 0:
            self.db.fail_commits -= 1
            self.rollback()
            raise StoreUnavailable("fake database: connection lost at commit (injected)")
        # Unique index on the idempotency key, checked against what others committed.
        committed = self.db.tables.sagas
        for saga_id, record in work.sagas.items():
            key = record.idempotency_key
            if key is None or saga_id in committed:
                continue
            if any(r.idempotency_key == key for r in committed.values()):
                self.rollback()
                raise DuplicateIdempotencyKey(key)
        # Unique index on the txid: a concurrent transaction may have inserted it.
        known = {r.txid for r in self.db.tables.ledger_attempts}
        seen_at_begin = {r.txid for r in self._base_attempts}
        for txid in (r.txid for r in work.ledger_attempts):
            if txid in known and txid not in seen_at_begin:
                self.rollback()
                raise DuplicateTxid(txid)
        self.db.tables = work
        self.db.commits += 1
        self.committed = True
        self._tables = None

    def rollback(self) -> None:
        if self._tables is not None:
            self.db.rollbacks += 1
        self._tables = None


class FakeOutboxReader:
    """The relay's view of a FakeDatabase's committed outbox."""

    def __init__(self, db: FakeDatabase) -> None:
        self.db = db
        self._claimed: set[int] = set()
        # Marks made inside open claims (innermost last): kept only if the claim's
        # block succeeds, as the SQL reader's claim transaction.
        self._marks: list[list[int]] = []

    @contextmanager
    def _claim(self, limit: int) -> Iterator[Sequence[PendingMessage]]:
        rows = [r for r in self.db.tables.outbox if not r.published and r.id not in self._claimed][
            :limit
        ]
        ids = {r.id for r in rows}
        self._claimed |= ids
        marks: list[int] = []
        self._marks.append(marks)
        try:
            yield [
                PendingMessage(r.id, r.message.message_id, r.message.saga_id, r.message.body)
                for r in rows
            ]
            self._close(marks)
            self._mark(marks)
        finally:
            self._claimed -= ids
            self._close(marks)

    def _close(self, marks: list[int]) -> None:
        self._marks = [m for m in self._marks if m is not marks]

    def claim(self, limit: int) -> AbstractContextManager[Sequence[PendingMessage]]:
        return self._claim(limit)

    def mark_published(self, ids: Sequence[int]) -> None:
        if self._marks:
            self._marks[-1].extend(ids)
            return
        self._mark(ids)

    def _mark(self, ids: Sequence[int]) -> None:
        wanted = set(ids)
        for row in self.db.tables.outbox:
            if row.id in wanted:
                row.published = True

    def oldest_unpublished_age(self) -> float | None:
        """Of the due rows, as the SQL reader (a delayed row counts from when it is due)."""
        at = datetime.now(UTC)
        due = [r.due_at for r in self.db.tables.outbox if not r.published and r.due_at <= at]
        if not due:
            return None
        return max((at - min(due)).total_seconds(), 0.0)

    def wait_for_rows(self, timeout: float) -> bool:
        """The fake hears no commits: the relay's poll finds new rows."""
        time.sleep(timeout)
        return False

    def close(self) -> None:
        """Nothing to release: the fake holds no connection."""


class FakePublisher:
    """Records what was published; `fail_batches` makes the next N batches raise."""

    def __init__(self) -> None:
        self.published: list[PendingMessage] = []
        self.fail_batches = 0
        self.closed = False

    def publish_batch(self, messages: Sequence[PendingMessage]) -> None:
        if self.fail_batches > 0:
            self.fail_batches -= 1
            raise ConnectionError("fake broker: publish not confirmed (injected)")
        self.published.extend(messages)

    def close(self) -> None:
        self.closed = True


# -- ledger ---------------------------------------------------------------------------


@dataclass
class FakeTx:
    txid: str
    channel: str
    function: str
    args: list[str]
    # Versions of the keys the chaincode read at endorsement (None: absent).
    reads: dict[str, int | None]
    writes: dict[str, dict[str, Any]]


class FakeLedger:
    """An in-memory ledger that behaves like Fabric with the sagafacts chaincode.

    prepare() endorses against the committed world state (refusing with
    `ALREADY_RECORDED:<record>` like the chaincode); submit() queues the envelope
    for ordering; cut() commits the queue as one block, validating each
    transaction's reads (MVCC_READ_CONFLICT if a key changed) and marking a
    repeated txid DUPLICATE_TXID. commit_status() answers only for committed
    txids, else StatusUnknown (it never waits).

    Faults, each a counter of the next N calls: drop_submit_reply (queued, then
    SubmitFailed), submit_unavailable (not queued, SubmitFailed), status_unknown,
    force_mvcc (the next N otherwise VALID transactions commit as MVCC conflicts),
    unreachable (every call raises a retryable error while > 0, not counted down).
    `on_prepare` runs after endorsing and before returning: the place to let
    another "host" act in between.
    """

    def __init__(self, *, auto_cut: bool = False) -> None:
        self.auto_cut = auto_cut
        self.state: dict[str, tuple[dict[str, Any], int]] = {}
        self.version = 0
        self.queue: list[bytes] = []
        self.envelopes: dict[str, bytes] = {}
        self.committed: dict[str, tuple[int, int]] = {}  # txid -> (code, block)
        self.blocks: list[list[tuple[str, int]]] = []
        self.prepared: list[str] = []
        self.submits: list[str] = []
        self.evaluations: list[tuple[str, list[str]]] = []
        # Every call in order: ("prepare", txid), ("submit", txid), ("status", txid),
        # ("evaluate", key); failed calls included.
        self.calls: list[tuple[str, str]] = []
        self.drop_submit_reply = 0
        self.submit_unavailable = 0
        self.status_unknown = 0
        self.force_mvcc = 0
        self.unreachable = False
        self.on_prepare: Callable[[PreparedTx], None] | None = None

    # -- reading, for assertions -------------------------------------------------------

    def valid_txids(self) -> list[str]:
        return [t for block in self.blocks for t, code in block if code == VALID]

    def record(self, key: str) -> dict[str, Any] | None:
        found = self.state.get(key)
        return copy.deepcopy(found[0]) if found else None

    # -- the port ------------------------------------------------------------------------

    def _reachable(self, what: type[LedgerError]) -> None:
        if self.unreachable:
            raise what("fake ledger: peer unavailable (injected)", retryable=True)

    def prepare(
        self,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[Arg] = (),
        *,
        endorsing_orgs: Sequence[str] | None = None,
        transient: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> PreparedTx:
        self.calls.append(("endorse", function))
        self._reachable(EndorseFailed)
        str_args = [a.decode() if isinstance(a, bytes) else a for a in args]
        txid = uuid.uuid4().hex + uuid.uuid4().hex
        reads, writes = self._simulate(txid, function, str_args)
        tx = FakeTx(txid, channel, function, str_args, reads, writes)
        envelope = json.dumps(dataclasses.asdict(tx), sort_keys=True).encode()
        self.prepared.append(txid)
        self.calls.append(("prepare", txid))
        prepared = PreparedTx(txid=txid, channel=channel, envelope=envelope)
        if self.on_prepare is not None:
            hook, self.on_prepare = self.on_prepare, None
            hook(prepared)
        return prepared

    def _refuse(self, status: int, code: str, detail: str) -> EndorseFailed:
        return EndorseFailed(
            "endorse failed: UNKNOWN: peer0 (Org1MSP): "
            f"chaincode response {status}, {code}:{detail}"
        )

    def _read(self, key: str) -> tuple[dict[str, Any] | None, int | None]:
        found = self.state.get(key)
        return (copy.deepcopy(found[0]), found[1]) if found else (None, None)

    def _simulate(
        self, txid: str, function: str, args: list[str]
    ) -> tuple[dict[str, int | None], dict[str, dict[str, Any]]]:
        if not args:
            raise self._refuse(400, "INVALID_ARGUMENT", "idem_key missing")
        key = args[0]
        existing, version = self._read(key)
        reads: dict[str, int | None] = {key: version}
        if existing is not None:
            raise self._refuse(409, "ALREADY_RECORDED", _canonical(existing))
        if function == "RecordPayment":
            if len(args) < 4 or not args[2].isdigit() or int(args[2]) <= 0:
                raise self._refuse(400, "INVALID_ARGUMENT", f"bad RecordPayment args {args!r}")
            record = {
                "key": key,
                "kind": "payment",
                "txid": txid,
                "reversed_by": None,
                "data": {"order_id": args[1], "amount_cents": int(args[2])},
            }
            return reads, {key: record}
        if function == "ReversePayment":
            original_key = args[1]
            original, original_version = self._read(original_key)
            reads[original_key] = original_version
            if original is None:
                raise self._refuse(404, "NOT_FOUND", f"no record under {original_key!r}")
            if original.get("reversed_by"):
                raise self._refuse(409, "ALREADY_REVERSED", _canonical(original))
            original["reversed_by"] = key
            reversal = {
                "key": key,
                "kind": "payment_reversal",
                "txid": txid,
                "reverses": original_key,
                "reversed_by": None,
                "data": {},
            }
            return reads, {key: reversal, original_key: original}
        raise self._refuse(400, "UNKNOWN_FUNCTION", function)

    def submit(self, prepared: PreparedTx | bytes, *, timeout: float | None = None) -> Submitted:
        self._reachable(SubmitFailed)
        envelope = prepared.envelope if isinstance(prepared, PreparedTx) else prepared
        tx = json.loads(envelope)
        self.calls.append(("submit", tx["txid"]))
        if self.submit_unavailable > 0:
            self.submit_unavailable -= 1
            raise SubmitFailed(
                "fake ledger: orderer unavailable (injected)", txid=tx["txid"], retryable=True
            )
        self.submits.append(tx["txid"])
        self.queue.append(envelope)
        self.envelopes[tx["txid"]] = envelope
        if self.auto_cut:
            self.cut()
        if self.drop_submit_reply > 0:
            self.drop_submit_reply -= 1
            raise SubmitFailed(
                "fake ledger: submit reply lost (injected)", txid=tx["txid"], retryable=True
            )
        return Submitted(txid=tx["txid"], channel=tx["channel"])

    def cut(self) -> list[tuple[str, int]]:
        """Order and commit everything queued as one block; returns (txid, code) pairs."""
        if not self.queue:
            return []
        number = len(self.blocks) + 1
        block: list[tuple[str, int]] = []
        for envelope in self.queue:
            tx = json.loads(envelope)
            txid = tx["txid"]
            if txid in self.committed or any(t == txid for t, _ in block):
                block.append((txid, DUPLICATE_TXID))
                continue
            current = {k: self.state[k][1] if k in self.state else None for k in tx["reads"]}
            code = VALID if current == tx["reads"] else MVCC_READ_CONFLICT
            if code == VALID and self.force_mvcc > 0:
                self.force_mvcc -= 1
                code = MVCC_READ_CONFLICT
            if code == VALID:
                for k, value in tx["writes"].items():
                    self.version += 1
                    self.state[k] = (value, self.version)
            block.append((txid, code))
            self.committed[txid] = (code, number)
        self.queue = []
        self.blocks.append(block)
        return block

    def commit_status(
        self, channel: str, txid: str, *, timeout: float | None = None
    ) -> CommitResult:
        self.calls.append(("status", txid))
        self._reachable(StatusUnknown)
        if self.status_unknown > 0:
            self.status_unknown -= 1
            raise StatusUnknown(
                "fake ledger: commit status deadline (injected)", txid=txid, retryable=True
            )
        if txid not in self.committed:
            raise StatusUnknown(f"fake ledger: {txid} not committed yet", txid=txid, retryable=True)
        code, block = self.committed[txid]
        return CommitResult(txid=txid, code=code, code_name=str(code), block_number=block)

    def evaluate(
        self,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[Arg] = (),
        *,
        target_orgs: Sequence[str] | None = None,
        transient: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        self._reachable(EvaluateFailed)
        str_args = [a.decode() if isinstance(a, bytes) else a for a in args]
        self.evaluations.append((function, str_args))
        self.calls.append(("evaluate", str_args[0] if str_args else ""))
        if function != "GetRecord":
            raise EvaluateFailed(f"fake ledger: unknown query {function}")
        record, _ = self._read(str_args[0])
        return b"" if record is None else _canonical(record).encode()


def valid_functions(ledger: FakeLedger) -> list[str]:
    """The chaincode function of every VALID transaction, in commit order."""
    functions = {}
    for envelope in ledger.envelopes.values():
        tx = json.loads(envelope)
        functions[tx["txid"]] = tx["function"]
    return [functions[t] for t in ledger.valid_txids()]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


if TYPE_CHECKING:
    from saga.ports.ledger import Ledger

    _ledger: Ledger = FakeLedger()
