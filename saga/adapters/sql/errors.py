"""Which database errors mean "the store is unreachable", and their translation.

The orchestrator treats these as "the transaction is lost, try the message
again later", never as a step failure (see Orchestrator.transient_errors).
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from saga.adapters.sql.tables import IDEMPOTENCY_KEY_CONSTRAINT
from saga.ports.store import DuplicateIdempotencyKey, StoreUnavailable

# OperationalError covers a lost or refused connection, a server shutting down,
# PostgreSQL serialization failures and deadlocks and SQLite's "database is locked"
# after busy_timeout: all worth retrying with the whole transaction.
# InterfaceError is what a driver raises on a connection it already knows is
# closed; DisconnectionError and TimeoutError come from the pool (the ping of an
# idle connection gave up, or no connection free in time).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StoreUnavailable,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


# read_only_sql_transaction: the server no longer takes writes (a standby, or a
# primary fenced with default_transaction_read_only for a switchover). The same
# transaction succeeds once a connection reaches the primary (see engine.py).
READ_ONLY_SQLSTATE = "25006"


def is_read_only(error: BaseException) -> bool:
    """A write refused because the server is read-only (the DBAPI error or its wrapper)."""
    orig = getattr(error, "orig", None) or error
    return getattr(orig, "sqlstate", None) == READ_ONLY_SQLSTATE


def is_transient(error: BaseException) -> bool:
    if isinstance(error, TRANSIENT_ERRORS):
        return True
    # Any DBAPI error SQLAlchemy recognised as a dropped connection.
    return isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated


def unavailable(error: BaseException) -> StoreUnavailable:
    if isinstance(error, StoreUnavailable):
        return error
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()
    first = detail[0] if detail else type(error).__name__
    translated = StoreUnavailable(f"database unavailable: {first}")
    translated.__cause__ = error
    return translated


def is_duplicate_idempotency_key(error: BaseException) -> bool:
    if not isinstance(error, sa_exc.IntegrityError):
        return False
    orig = error.orig
    diag = getattr(orig, "diag", None)
    if diag is not None:  # psycopg names the violated constraint
        return getattr(diag, "constraint_name", None) == IDEMPOTENCY_KEY_CONSTRAINT
    # sqlite3 only says which column: "UNIQUE constraint failed: sagas.idempotency_key"
    return "sagas.idempotency_key" in str(orig)


def duplicate_key(error: BaseException) -> DuplicateIdempotencyKey:
    translated = DuplicateIdempotencyKey("another saga already holds this idempotency key")
    translated.__cause__ = error
    return translated
