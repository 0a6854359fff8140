"""Which clock stamps outbox and inbox rows.

On PostgreSQL the database's clock (`now()`, the transaction's start): every relay,
worker and API process then agrees on when a delayed message becomes due, however
far apart their own clocks are. SQLite runs in one process on one host, so the
process's clock is the database's clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, literal
from sqlalchemy.engine import Dialect

from saga.adapters.sql.tables import UtcDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


def now(dialect: Dialect) -> Any:
    """The current time as a value or SQL expression usable in a statement."""
    if dialect.name == "postgresql":
        return func.now()
    return utcnow()


def as_utc(value: Any) -> Any:
    """Bind a Python datetime with the store's UTC handling (for raw comparisons)."""
    return literal(value, UtcDateTime())
