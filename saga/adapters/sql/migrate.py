"""Running the Alembic migrations in `db/` from code (`saga db upgrade` calls this).

The migrations live in `<repo>/db`. `saga/adapters/sql/_migrations` is a symlink to it,
so a wheel built with the package-data entry for `_migrations` ships them inside
the package; `<repo>/db` itself is the fallback for a checkout without symlinks.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from saga.adapters.sql.engine import create_engine
from saga.core.errors import SagaError

# Any constant shared by every process that migrates the same database.
_PG_MIGRATION_LOCK = 0x5A6A_0001


class MigrationsNotFound(SagaError, RuntimeError):
    pass


def script_location() -> Path:
    here = Path(__file__).resolve().parent
    # Our own copy first: a `db` directory beside site-packages could be anyone's.
    for candidate in (here / "_migrations", here.parents[3] / "db"):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise MigrationsNotFound(
        f"no Alembic migrations next to {here}: expected {here / '_migrations'} (installed "
        f"package, or the symlink in a checkout) or {here.parents[3] / 'db'} (checkout)"
    )


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` to `revision` (PostgreSQL or SQLite).

    Safe to run from several processes at once on PostgreSQL: they take turns on
    an advisory lock, and the later ones find nothing left to do.
    """
    engine = create_engine(database_url, poolclass=_null_pool())
    try:
        _run(engine, "upgrade", revision)
    finally:
        engine.dispose()


def downgrade(database_url: str, revision: str) -> None:
    engine = create_engine(database_url, poolclass=_null_pool())
    try:
        _run(engine, "downgrade", revision)
    finally:
        engine.dispose()


def _run(engine: Engine, action: str, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
        # env.py runs the migrations on this connection, inside this transaction.
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def current_revision(database_url: str) -> str | None:
    engine = create_engine(database_url, poolclass=_null_pool())
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _null_pool() -> type[NullPool]:
    # A one-off command: no connections left behind in a pool.
    return NullPool
