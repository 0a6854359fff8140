"""Alembic environment for the saga store.

`saga.adapters.sql.migrate` passes an open connection in `config.attributes["connection"]`
(inside its transaction, holding the migration lock). The `alembic` command line
gets its database from `-x url=...` or SAGA_DATABASE_URL.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from saga.adapters.sql.engine import create_engine


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "SAGA_DATABASE_URL", "sqlite:///saga.sqlite3"
    )
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as own:
            _migrate(own)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run()
