"""Outbox inserts wake the relay: NOTIFY saga_outbox (PostgreSQL only).

A statement-level trigger, so no extra round trip for the writer: PostgreSQL
delivers the notification when the inserting transaction commits (never before,
never for a rolled-back one) and folds repeats within one transaction into one.
The relay LISTENs and claims at once instead of waiting out its poll interval;
the poll stays as the backstop (delayed rows falling due, a lost listener).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

CHANNEL = "saga_outbox"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION saga_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION saga_outbox_notify()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS saga_outbox_notify()")
