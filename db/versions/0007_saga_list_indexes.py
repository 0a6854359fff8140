"""Indexes for the operator console's saga list and overview.

The list pages newest progress first with a keyset on (updated_at, id); without a
status filter nothing served that order, so every page sorted the whole table.
The overview counts sagas started in the last hour by created_at.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_sagas_updated_at_id", "sagas", ["updated_at", "id"])
    op.create_index("ix_sagas_created_at", "sagas", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_sagas_created_at", table_name="sagas")
    op.drop_index("ix_sagas_updated_at_id", table_name="sagas")
