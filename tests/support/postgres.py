"""Pytest plugin: a real PostgreSQL (and an SQLite file) with the store's schema.

PostgreSQL is expected at 127.0.0.1:5432, user postgres, trust auth (see
DESIGN.md); SAGA_TEST_PG_ADMIN_URL points elsewhere. If it does not answer, every
test that needs it FAILS with the command that starts it: a missing service is a
failure, never a skip.

Each test session gets its own database (unique name, so parallel sessions and
other people's databases are never touched), migrated with the product's own
`saga.adapters.sql.upgrade`, dropped at the end. Tables are emptied before each test.

Fixtures:
    pg_url       a migrated, emptied PostgreSQL database URL (postgresql://...)
    sqlite_url   a migrated, emptied SQLite file URL (sqlite:///...)
    store_url    parametrised over both: every test using it runs on each backend
    store_engine an engine (saga.adapters.sql.create_engine) for store_url, shared per session
    pg_admin_url the server's maintenance database, for tests that need more databases
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from saga.adapters.sql import create_engine, upgrade

ADMIN_URL = os.environ.get(
    "SAGA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
START_COMMAND = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"

# Every table the migrations create except alembic_version, children first.
STORE_TABLES = (
    "ledger_attempts",
    "saga_steps",
    "saga_history",
    "inbox",
    "outbox",
    "sagas",
    "order_payment_events",
)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _admin_connect() -> psycopg.Connection:
    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)


def truncate_store(engine: Engine) -> None:
    """Empty every store table (and the example's) so a test starts from nothing."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(STORE_TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in STORE_TABLES:
                connection.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    try:
        with _admin_connect() as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({str(exc).strip()}).\n"
            f"Start it with:  {START_COMMAND}",
            pytrace=False,
        )
    return ADMIN_URL


@pytest.fixture(scope="session")
def _pg_database(pg_admin_url: str) -> Iterator[str]:
    name = f"saga_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _admin_connect() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(pg_admin_url, name)
    try:
        upgrade(url)
        yield url
    finally:
        with _admin_connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("store") / "saga.sqlite3"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def _engines() -> Iterator[dict[str, Engine]]:
    engines: dict[str, Engine] = {}
    yield engines
    for engine in engines.values():
        engine.dispose()


def _engine_for(engines: dict[str, Engine], url: str) -> Engine:
    if url not in engines:
        engines[url] = create_engine(url)
    return engines[url]


@pytest.fixture
def pg_url(_pg_database: str, _engines: dict[str, Engine]) -> str:
    truncate_store(_engine_for(_engines, _pg_database))
    return _pg_database


@pytest.fixture
def sqlite_url(_sqlite_database: str, _engines: dict[str, Engine]) -> str:
    truncate_store(_engine_for(_engines, _sqlite_database))
    return _sqlite_database


@pytest.fixture(params=["postgresql", "sqlite"])
def store_url(request: pytest.FixtureRequest) -> str:
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def store_engine(store_url: str, _engines: dict[str, Engine]) -> Engine:
    return _engine_for(_engines, store_url)
