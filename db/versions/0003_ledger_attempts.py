"""Chain steps: one row per ledger transaction attempt (ledger_attempts).

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ledger_attempts",
        sa.Column("id", big_id, sa.Identity(), primary_key=True),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("step", sa.String(63), nullable=False),
        sa.Column("purpose", sa.String(8), nullable=False),
        # Fabric rejects a duplicate txid, so one row per txid is the ledger's rule too.
        sa.Column("txid", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(250), nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("code", sa.Integer),
        sa.Column("block", sa.BigInteger),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("submitted_at", ts),
        sa.Column("committed_at", ts),
        sa.Column("worker", sa.String(255)),
        sa.UniqueConstraint("txid", name="uq_ledger_attempts_txid"),
    )
    op.create_index(
        "ix_ledger_attempts_saga_step", "ledger_attempts", ["saga_id", "step", "purpose"]
    )
    # The watcher and the sweeper only ever look for attempts not yet committed.
    op.create_index(
        "ix_ledger_attempts_unsettled",
        "ledger_attempts",
        ["created_at"],
        postgresql_where=sa.text("state <> 'committed'"),
        sqlite_where=sa.text("state <> 'committed'"),
    )


def downgrade() -> None:
    op.drop_table("ledger_attempts")
