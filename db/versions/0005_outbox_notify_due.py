"""Outbox wake-ups only for rows due now (PostgreSQL only).

0004 notified the relay on every outbox insert. Rows written held back (the
next step of a saga its worker runs inline, a retry's backoff) are not due, and
each woke the relay for an empty claim: on a saga of local steps run inline,
two of every three wake-ups. A row trigger with a WHEN clause notifies only for
rows due at once, and for a held row made due by an UPDATE of `available_at`
(the worker releasing it). PostgreSQL still folds the notifications of one
transaction into one, delivered at commit. Delayed rows falling due are found
by the relay's poll, as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

DUE = "NEW.published_at IS NULL AND NEW.available_at <= now()"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT OR UPDATE OF available_at ON outbox "
        f"FOR EACH ROW WHEN ({DUE}) EXECUTE FUNCTION saga_outbox_notify()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION saga_outbox_notify()"
    )
