"""The example service's own table (created by the Alembic migrations in db/)."""

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, func

metadata = MetaData()

order_payment_events = Table(
    "order_payment_events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("saga_id", String(36), nullable=False, index=True),
    Column("order_id", String(64), nullable=False),
    Column("step", String(63), nullable=False),
    Column("action", String(16), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
