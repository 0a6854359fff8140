"""saga_steps.waiting_since: when a chain step began waiting for an unreachable ledger.

NULL unless the step waits; set by the state machine's LedgerWait and cleared by
any other answer. `saga show`, the API and the metrics read it to tell a saga that
waits for the ledger from one that is stuck, and the partial index keeps the
metrics' count of waiting steps cheap.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("saga_steps", sa.Column("waiting_since", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_saga_steps_waiting",
        "saga_steps",
        ["waiting_since"],
        postgresql_where=sa.text("waiting_since IS NOT NULL"),
        sqlite_where=sa.text("waiting_since IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_saga_steps_waiting", table_name="saga_steps")
    with op.batch_alter_table("saga_steps") as batch:
        batch.drop_column("waiting_since")
