"""`saga db`: the database schema (Alembic migrations)."""

from __future__ import annotations

import typer

from saga.entrypoints.cli._common import (
    DbOpt,
    console,
    env_settings,
)

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, revision: str = "head") -> None:
    """Create or migrate the schema to REVISION (default: the latest)."""
    from saga.adapters.sql.migrate import upgrade

    settings = env_settings(db)
    upgrade(settings.sqlalchemy_url, revision)
    console.print(f"schema at {revision} on {settings.redacted()['SAGA_DATABASE_URL']}")
