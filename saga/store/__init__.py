"""The SQL store: PostgreSQL (psycopg 3) or SQLite through SQLAlchemy 2 Core.

engine = create_engine(settings)            # or create_engine("sqlite:///x.db")
upgrade(settings.database_url)              # schema, by the Alembic migrations in db/
uow_factory = SqlUnitOfWorkFactory(engine)  # the orchestrator's UnitOfWorkFactory
reader = SqlOutboxReader(engine)            # the relay's OutboxReader
Orchestrator(registry, uow_factory, transient_errors=TRANSIENT_ERRORS)
"""

from saga.store.engine import create_engine, sqlalchemy_url
from saga.store.errors import TRANSIENT_ERRORS, is_transient
from saga.store.inbox import ConcurrentDelivery
from saga.store.ledger_attempts import SqlLedgerAttempts
from saga.store.migrate import current_revision, head_revision, upgrade
from saga.store.outbox import SqlOutbox, SqlOutboxReader
from saga.store.repository import SqlSagaRepository
from saga.store.retention import DEFAULT_RETENTION, Purged, purge
from saga.store.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory, StepEndedTransaction

__all__ = [
    "DEFAULT_RETENTION",
    "TRANSIENT_ERRORS",
    "ConcurrentDelivery",
    "Purged",
    "SqlLedgerAttempts",
    "SqlOutbox",
    "SqlOutboxReader",
    "SqlSagaRepository",
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
