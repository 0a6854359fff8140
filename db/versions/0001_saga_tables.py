"""Saga store: sagas, saga_steps, outbox, inbox, saga_history.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the types, not imports from the application: a migration must
# keep producing the schema it produced the day it was written.
json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sagas",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current", sa.Integer, nullable=False),
        sa.Column("input", json, nullable=False),
        sa.Column("data", json, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("payload_hash", sa.String(64)),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.UniqueConstraint("idempotency_key", name="uq_sagas_idempotency_key"),
    )
    op.create_index("ix_sagas_status_updated_at", "sagas", ["status", "updated_at"])
    op.create_index("ix_sagas_name", "sagas", ["name"])

    op.create_table(
        "saga_steps",
        sa.Column(
            "saga_id",
            sa.String(36),
            sa.ForeignKey("sagas.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16)),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("compensation_attempts", sa.Integer, nullable=False),
        sa.Column("compensation_failures", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", ts, nullable=False),
    )

    op.create_table(
        "outbox",
        sa.Column("id", big_id, sa.Identity(), primary_key=True),
        sa.Column("message_id", sa.String(64), nullable=False, unique=True),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("body", json, nullable=False),
        sa.Column("available_at", ts, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("published_at", ts),
    )
    # The relay only ever looks for unpublished rows; see saga.adapters.sql.outbox.
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["id"],
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )
    op.create_index("ix_outbox_saga_id", "outbox", ["saga_id"])

    op.create_table(
        "inbox",
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("processed_at", ts, nullable=False),
    )
    op.create_index("ix_inbox_processed_at", "inbox", ["processed_at"])

    op.create_table(
        "saga_history",
        sa.Column("id", big_id, sa.Identity(), primary_key=True),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("detail", json, nullable=False),
        sa.Column("actor", sa.String(200)),
    )
    op.create_index("ix_saga_history_saga_id", "saga_history", ["saga_id"])


def downgrade() -> None:
    op.drop_table("saga_history")
    op.drop_table("inbox")
    op.drop_table("outbox")
    op.drop_table("saga_steps")
    op.drop_table("sagas")
