"""The saga store's tables as SQLAlchemy Core objects.

The schema itself is created and changed only by the Alembic migrations in `db/`;
these objects describe it for queries. A test compares the two so they cannot drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

# Constraint names are spelled out so migrations and the code that recognises a
# violation (DuplicateIdempotencyKey) agree on them on every backend.
IDEMPOTENCY_KEY_CONSTRAINT = "uq_sagas_idempotency_key"


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends.

    SQLite has no timezone type: values are stored as naive UTC text (which keeps
    text comparison equal to time comparison) and come back tagged as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

sagas = Table(
    "sagas",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(63), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("current", Integer, nullable=False),
    Column("input", Json, nullable=False),
    Column("data", Json, nullable=False),
    Column("reason", Text),
    Column("idempotency_key", String(200)),
    Column("payload_hash", String(64)),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("idempotency_key", name=IDEMPOTENCY_KEY_CONSTRAINT),
    Index("ix_sagas_status_updated_at", "status", "updated_at"),
    Index("ix_sagas_name", "name"),
    # The console's list (keyset on updated_at, id) and overview (migration 0007).
    Index("ix_sagas_updated_at_id", "updated_at", "id"),
    Index("ix_sagas_created_at", "created_at"),
    # Input-field filters: JSONB containment (migration 0008).
    Index(
        "ix_sagas_input",
        "input",
        postgresql_using="gin",
        postgresql_ops={"input": "jsonb_path_ops"},
    ),
)

saga_steps = Table(
    "saga_steps",
    metadata,
    Column("saga_id", String(36), ForeignKey("sagas.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("name", String(63), nullable=False),
    # NULL until the core's StepState carries the kind; see saga.adapters.sql.repository.
    Column("kind", String(16)),
    Column("status", String(24), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("compensation_attempts", Integer, nullable=False),
    Column("compensation_failures", Integer, nullable=False),
    Column("last_error", Text),
    Column("updated_at", UtcDateTime, nullable=False),
    # When a chain step began waiting for an unreachable ledger (migration 0006).
    Column("waiting_since", UtcDateTime),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("saga_id", String(36), nullable=False),
    Column("body", Json, nullable=False),
    Column("available_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("published_at", UtcDateTime),
)
# Only unpublished rows are ever searched by the relay; a partial index stays as
# small as the backlog however many published rows the table still holds.
Index(
    "ix_outbox_unpublished",
    outbox.c.id,
    postgresql_where=outbox.c.published_at.is_(None),
    sqlite_where=outbox.c.published_at.is_(None),
)
Index("ix_outbox_saga_id", outbox.c.saga_id)

inbox = Table(
    "inbox",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("saga_id", String(36), nullable=False),
    Column("processed_at", UtcDateTime, nullable=False, index=True),
)

saga_history = Table(
    "saga_history",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("saga_id", String(36), nullable=False, index=True),
    Column("at", UtcDateTime, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("detail", Json, nullable=False),
    Column("actor", String(200)),
)

ledger_attempts = Table(
    "ledger_attempts",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("saga_id", String(36), nullable=False),
    Column("step", String(63), nullable=False),
    Column("purpose", String(8), nullable=False),
    Column("txid", String(64), nullable=False),
    Column("channel", String(250), nullable=False),
    # The signed envelope, resubmitted byte for byte after an unknown outcome.
    Column("envelope", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("code", Integer),
    Column("block", BigInteger),
    Column("created_at", UtcDateTime, nullable=False),
    Column("submitted_at", UtcDateTime),
    Column("committed_at", UtcDateTime),
    Column("worker", String(255)),
    UniqueConstraint("txid", name="uq_ledger_attempts_txid"),
    Index("ix_ledger_attempts_saga_step", "saga_id", "step", "purpose"),
)
Index(
    "ix_ledger_attempts_unsettled",
    ledger_attempts.c.created_at,
    postgresql_where=ledger_attempts.c.state != "committed",
    sqlite_where=ledger_attempts.c.state != "committed",
)

Index(
    "ix_saga_steps_waiting",
    saga_steps.c.waiting_since,
    postgresql_where=saga_steps.c.waiting_since.is_not(None),
    sqlite_where=saga_steps.c.waiting_since.is_not(None),
)

ALL_TABLES = (sagas, saga_steps, outbox, inbox, saga_history, ledger_attempts)
