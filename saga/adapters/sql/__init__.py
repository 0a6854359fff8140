"""The SQL store: PostgreSQL (psycopg 3) or SQLite through SQLAlchemy 2 Core.

engine = create_engine(settings)            # or create_engine("sqlite:///x.db")
upgrade(settings.database_url)              # schema, by the Alembic migrations in db/
uow_factory = SqlUnitOfWorkFactory(engine)  # the orchestrator's UnitOfWorkFactory
reader = SqlOutboxReader(engine)            # the relay's OutboxReader
starts = SqlSagaStarts(engine)              # the enqueue's SagaStarts
Orchestrator(registry, uow_factory, transient_errors=TRANSIENT_ERRORS, starts=starts)
"""

from saga.adapters.sql.engine import create_engine, sqlalchemy_url
from saga.adapters.sql.errors import TRANSIENT_ERRORS, is_transient
from saga.adapters.sql.inbox import ConcurrentDelivery
from saga.adapters.sql.ledger_attempts import SqlLedgerAttempts
from saga.adapters.sql.migrate import current_revision, head_revision, upgrade
from saga.adapters.sql.outbox import SqlOutbox, SqlOutboxReader
from saga.adapters.sql.repository import SqlSagaRepository
from saga.adapters.sql.retention import DEFAULT_RETENTION, Purged, purge
from saga.adapters.sql.starts import SqlSagaStarts
from saga.adapters.sql.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory, StepEndedTransaction

__all__ = [
    "DEFAULT_RETENTION",
    "TRANSIENT_ERRORS",
    "ConcurrentDelivery",
    "Purged",
    "SqlLedgerAttempts",
    "SqlOutbox",
    "SqlOutboxReader",
    "SqlSagaRepository",
    "SqlSagaStarts",
    "SqlUnitOfWork",
    "SqlUnitOfWorkFactory",
    "StepEndedTransaction",
    "create_engine",
    "current_revision",
    "head_revision",
    "is_transient",
    "purge",
    "sqlalchemy_url",
    "upgrade",
]
