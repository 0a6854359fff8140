"""A GIN index on sagas.input, so the console's and `saga list`'s input-field filter
(JSONB containment, `input @> '{"customer_id": "c-17"}'`) reads the index instead
of every saga: 312 ms at 100,000 sagas without it (bench/console_list.py).

jsonb_path_ops: smaller and faster than the default opclass, and containment is
the one operator the search uses. SQLite gets a plain index of the same name (no
GIN there; the SQLite store is for one machine) so both schemas match the code.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(
        "ix_sagas_input",
        "sagas",
        ["input"],
        postgresql_using="gin",
        postgresql_ops={"input": "jsonb_path_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_sagas_input", table_name="sagas")
