"""The outbox: messages written in the step's transaction, published by the relay.

Why the relay selects by state and never by position
-----------------------------------------------------
Outbox ids come from a sequence, and a sequence hands out numbers when rows are
inserted, not when their transactions commit. Transaction A may take id 10 and
commit after transaction B took id 11 and committed: for a moment 11 is visible
and 10 is not. A relay that remembered "published up to 11" and asked for
`id > 11` next would skip 10 forever (eventsourcing's PostgreSQL recorder
documents the same hazard for its notification log).

`SqlOutboxReader.claim` therefore asks for rows *by state*: `published_at IS
NULL AND available_at <= now()`, ordered by id only to publish oldest first.
Row 10 is unpublished until someone publishes it; the poll after A commits finds
it, whatever ids were published meanwhile. Nothing is remembered between polls,
so there is no high-water mark to get ahead of a late commit.

Two relays at once: on PostgreSQL the claim locks its rows with `FOR UPDATE SKIP
LOCKED`, so concurrent claims take disjoint rows without waiting for each other;
a relay that dies with rows claimed loses its locks with its connection and the
rows are claimed again (published twice at worst, which the inbox absorbs). On
SQLite the claim's BEGIN IMMEDIATE takes the write lock, so claims run one at a
time and the second sees the first's rows already marked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Interval, bindparam, func, insert, select, update
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session

from saga.adapters.sql.clock import now, utcnow
from saga.adapters.sql.errors import TRANSIENT_ERRORS, is_transient, unavailable
from saga.adapters.sql.tables import outbox
from saga.ports.broker import PendingMessage
from saga.ports.store import OutboxMessage, OutboxReader

# Channel the outbox trigger (migration 0004) notifies when an insert commits.
NOTIFY_CHANNEL = "saga_outbox"


# Built once (on every step's path); the other columns come from the parameters.
_ADD = insert(outbox)
# The database's clock on PostgreSQL (see saga.adapters.sql.clock). A due row is due at
# the transaction's `now()`, which the wake-up trigger (migration 0005) compares
# with; a delayed one counts its delay from the statement's own time, so a long
# transaction does not eat into an inline step's reserve or a retry's backoff.
_ADD_POSTGRESQL = insert(outbox).values(available_at=func.now(), created_at=func.now())
_ADD_DELAYED_POSTGRESQL = insert(outbox).values(
    available_at=func.clock_timestamp() + bindparam("delay", type_=Interval()),
    created_at=func.now(),
)
_UNPUBLISHED = (outbox.c.message_id == bindparam("b_message_id"), outbox.c.published_at.is_(None))
_TAKE = update(outbox).where(*_UNPUBLISHED)
_TAKE_POSTGRESQL = update(outbox).where(*_UNPUBLISHED).values(published_at=func.now())


class SqlOutbox:
    """The writing side, inside a unit of work."""

    def __init__(
        self, session: Session, connection: Callable[[], Connection] | None = None
    ) -> None:
        self._session = session
        self._conn = connection or session.connection
        self._postgresql = session.get_bind().dialect.name == "postgresql"

    def add(self, message: OutboxMessage) -> None:
        values: dict[str, Any] = {
            "message_id": message.message_id,
            "saga_id": message.saga_id,
            "body": message.body,
        }
        if self._postgresql:
            if message.delay > 0:
                values["delay"] = timedelta(seconds=message.delay)
                self._conn().execute(_ADD_DELAYED_POSTGRESQL, values)
            else:
                self._conn().execute(_ADD_POSTGRESQL, values)
        else:
            at = utcnow()
            values["available_at"] = at + timedelta(seconds=max(message.delay, 0.0))
            values["created_at"] = at
            self._conn().execute(_ADD, values)

    def take(self, message_id: str) -> None:
        if self._postgresql:
            self._conn().execute(_TAKE_POSTGRESQL, {"b_message_id": message_id})
        else:
            self._conn().execute(_TAKE, {"b_message_id": message_id, "published_at": utcnow()})

    def release(self, message_id: str) -> None:
        dialect = self._session.get_bind().dialect
        self._session.execute(
            update(outbox)
            .where(outbox.c.message_id == message_id, outbox.c.published_at.is_(None))
            .values(available_at=now(dialect))
        )

    def oldest_unpublished_age(self) -> float | None:
        return oldest_unpublished_age(self._session, self._session.get_bind().dialect)

    def count_unpublished(self) -> int:
        return count_unpublished(self._session)


class SqlOutboxReader:
    """OutboxReader for the relay. One claim at a time per thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._listener: Any = None

    def wait_for_rows(self, timeout: float) -> bool:
        """Return True once an outbox insert commits (PostgreSQL LISTEN), False after `timeout`.

        Saves the relay its poll interval on every hop of a saga. Only a wake-up
        call: the claim still selects by state, so a missed or spurious
        notification costs at most one poll interval or one empty claim. Without
        PostgreSQL, or while the listening connection is down, it just sleeps.
        """
        listener = self._listen()
        if listener is None:
            time.sleep(timeout)
            return False
        try:
            # Returns at the first notification, with every one already arrived.
            return any(True for _ in listener.notifies(timeout=timeout, stop_after=1))
        except Exception:
            self.close()  # reconnected at the next wait
            time.sleep(timeout)
            return False

    def _listen(self) -> Any:
        if self._engine.dialect.name != "postgresql":
            return None
        if self._listener is not None and not self._listener.closed:
            return self._listener
        try:
            import psycopg

            # The dialect's own connect arguments, not the URL rendered back: a
            # multi-host URL (host=h1:p1&host=h2:p2, for failover) is only libpq's
            # comma lists once the dialect has translated it.
            _, params = self._engine.dialect.create_connect_args(self._engine.url)
            params.pop("context", None)
            params["connect_timeout"] = 5
            conn = psycopg.connect(autocommit=True, **params)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except Exception:
            return None
        self._listener = conn
        return conn

    def close(self) -> None:
        """Close the LISTEN connection, if any."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with suppress(Exception):
                listener.close()

    def claim(self, limit: int) -> AbstractContextManager[Sequence[PendingMessage]]:
        """Lock up to `limit` due, unpublished rows, oldest id first.

        Commits at exit (with the marks made by `mark_published` inside the block);
        rolls back if the block raises, leaving every row for the next claim.
        Database trouble comes out as StoreUnavailable.
        """
        return self._claim(limit)

    @contextmanager
    def _claim(self, limit: int) -> Iterator[Sequence[PendingMessage]]:
        if getattr(self._local, "connection", None) is not None:
            raise RuntimeError("claim() is already open in this thread")
        try:
            connection = self._engine.connect()
        except TRANSIENT_ERRORS as exc:
            raise unavailable(exc) from exc
        try:
            transaction = connection.begin()
            query = (
                select(outbox.c.id, outbox.c.message_id, outbox.c.saga_id, outbox.c.body)
                .where(
                    outbox.c.published_at.is_(None),
                    outbox.c.available_at <= now(connection.dialect),
                )
                .order_by(outbox.c.id)
                .limit(limit)
            )
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = connection.execute(query).all()
            self._local.connection = connection
            try:
                yield [PendingMessage(r.id, r.message_id, r.saga_id, r.body) for r in rows]
            finally:
                self._local.connection = None
            transaction.commit()
        except BaseException as exc:
            _quiet_rollback(connection)
            if is_transient(exc):
                raise unavailable(exc) from exc
            raise
        finally:
            connection.close()

    def mark_published(self, ids: Sequence[int]) -> None:
        """Mark rows published: in the open claim's transaction, or in one of its own."""
        if not ids:
            return
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            self._mark(connection, ids)
            return
        try:
            with self._engine.begin() as own:
                self._mark(own, ids)
        except TRANSIENT_ERRORS as exc:
            raise unavailable(exc) from exc

    @staticmethod
    def _mark(connection: Connection, ids: Sequence[int]) -> None:
        connection.execute(
            update(outbox)
            .where(outbox.c.id.in_(list(ids)), outbox.c.published_at.is_(None))
            .values(published_at=now(connection.dialect))
        )

    def oldest_unpublished_age(self) -> float | None:
        """Seconds the oldest due, unpublished row has waited (None if none waits).

        A delayed row counts from when it became due, so a long retry backoff is
        not mistaken for a stuck relay.
        """
        try:
            with self._engine.begin() as connection:
                return oldest_unpublished_age(connection, connection.dialect)
        except TRANSIENT_ERRORS as exc:
            raise unavailable(exc) from exc

    def pending_count(self) -> int:
        """Unpublished rows, due or not (for metrics)."""
        try:
            with self._engine.connect() as connection:
                return count_unpublished(connection)
        except TRANSIENT_ERRORS as exc:
            raise unavailable(exc) from exc


def oldest_unpublished_age(db: Connection | Session, dialect: Dialect) -> float | None:
    """The reader's and the unit of work's `oldest_unpublished_age`, by the database's clock."""
    current = now(dialect)
    oldest = db.execute(
        select(func.min(outbox.c.available_at)).where(
            outbox.c.published_at.is_(None), outbox.c.available_at <= current
        )
    ).scalar()
    if oldest is None:
        return None
    at = db.execute(select(func.now())).scalar_one() if dialect.name == "postgresql" else utcnow()
    return max((at - oldest).total_seconds(), 0.0)


def count_unpublished(db: Connection | Session) -> int:
    count: Any = db.execute(
        select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
    ).scalar_one()
    return int(count)


def _quiet_rollback(connection: Connection) -> None:
    # A lost connection took the transaction with it; the error that got us here
    # says more than this one would.
    with suppress(*TRANSIENT_ERRORS):
        connection.rollback()


if TYPE_CHECKING:
    _port: OutboxReader = SqlOutboxReader(Engine.__new__(Engine))
