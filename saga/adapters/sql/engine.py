"""Engines for the store: PostgreSQL through psycopg 3, or an SQLite file.

SQLite serialises writers: every transaction starts with BEGIN IMMEDIATE, which
takes the database's write lock up front. So `get(..., for_update=True)` and the
outbox claim are honest on SQLite too (no other writer can run between the read
and the write), at the price of one writer at a time, which is what SQLite offers
anyway. Without it, two deferred transactions that both read and then write end
in SQLITE_BUSY for one of them, or worse, both act on the same read.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine, make_url

from saga.adapters.sql.errors import is_read_only
from saga.config import Settings
from saga.ports.store import StoreUnavailable

# A writer waits this long for the SQLite write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000

# A pooled connection idle for longer than this is pinged before use. One used
# more recently is trusted: pinging every checkout was a round trip per
# transaction (a quarter of a step's); if the server did restart in that window
# the transaction fails as StoreUnavailable, SQLAlchemy drops the whole pool on
# the disconnect, and the message is retried.
PING_AFTER_IDLE_SECONDS = 1.0


def sqlalchemy_url(database_url: str) -> str:
    """`postgresql://...` as the psycopg 3 URL SQLAlchemy needs; other URLs unchanged."""
    return Settings(database_url=database_url).sqlalchemy_url


def create_engine(settings: Settings | str, **overrides: Any) -> Engine:
    """An engine for Settings (or a bare database URL), configured for the store."""
    if isinstance(settings, str):
        settings = Settings(database_url=settings)
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url.render_as_string(hide_password=False), **overrides)
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": 30,
        # Outlives idle-connection reapers in proxies and load balancers.
        "pool_recycle": 1800,
    }
    if url.get_backend_name() == "postgresql":
        # A dead server is noticed in seconds rather than after the OS TCP timeout.
        options["connect_args"] = {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
    if "poolclass" in overrides:
        # Sizing applies to the default queue pool only (NullPool rejects it).
        for key in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(key, None)
    options.update(overrides)
    engine = sqlalchemy.create_engine(url, **options)
    if not options.get("pool_pre_ping"):
        _ping_when_idle(engine)
    if url.get_backend_name() == "postgresql":
        _read_only_is_an_outage(engine)
    return engine


def _read_only_is_an_outage(engine: Engine) -> None:
    """A write refused by a read-only server drops the connection and is StoreUnavailable.

    A session can outlive the server's role: a URL without
    target_session_attrs=read-write that reached the standby, a primary fenced
    read-only for a switchover. Left in the pool, the connection would refuse
    every write while the primary is elsewhere; and a refused write would read
    as the step's own failure (an InternalError), spending its business retries.
    As a disconnect, the pool drops it and every connection opened before it;
    as StoreUnavailable, the step waits and retries like any outage.
    """

    @event.listens_for(engine, "handle_error")
    def _read_only(context: Any) -> None:
        if not is_read_only(context.original_exception):
            return
        context.is_disconnect = True
        raise StoreUnavailable(
            "database unavailable: the server does not take writes (a standby, or a "
            "primary being switched over); retried on the primary"
        ) from context.original_exception


def _ping_when_idle(engine: Engine) -> None:
    """Pre-ping a pooled connection only if it sat idle (see PING_AFTER_IDLE_SECONDS).

    A restarted PostgreSQL leaves every pooled connection dead; the ping swaps a
    dead one for a live one instead of failing the next transaction.
    """

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_connection: Any, record: Any) -> None:
        record.info["saga_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _idle(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["saga_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("saga_idle_since", 0.0)
        if time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out (or opens) another.
            raise exc.DisconnectionError(f"pooled connection is dead: {error}") from error
        record.info["saga_idle_since"] = time.monotonic()


def _sqlite_engine(url: str, **overrides: Any) -> Engine:
    options: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
    options.update(overrides)
    engine = sqlalchemy.create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (which would issue
        # a deferred BEGIN only before writes) so the "begin" hook below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL lets readers proceed while a writer holds the lock.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            # In WAL mode NORMAL survives any process crash; only an OS crash or
            # power loss may drop the last commits, which the embedded default
            # accepts (use PostgreSQL where that matters).
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
