"""The store for tests that write ledger attempts (a plugin of tests/conftest.py).

`engine` is the PostgreSQL store with ledger_attempts emptied too:
tests/support/postgres.py empties only the tables it lists, and ledger_attempts is
newer than that list. `uow_factory` is the product's unit of work over it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = create_engine(pg_url)
    with eng.begin() as c:
        c.execute(text("TRUNCATE ledger_attempts RESTART IDENTITY"))
    yield eng
    eng.dispose()


@pytest.fixture
def uow_factory(engine: Engine) -> SqlUnitOfWorkFactory:
    return SqlUnitOfWorkFactory(engine)
