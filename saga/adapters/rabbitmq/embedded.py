"""The embedded broker: kombu's SQLAlchemy transport, polling faster.

URLs look like `embedded+sqlite:///saga-broker.sqlite3`. kombu hands every
transport option of its SQLAlchemy transport to create_engine, so the polling
interval cannot be set through options; this subclass sets it instead (kombu's
default second between empty polls would dominate every step of a saga).
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SqlalchemyTransport

SCHEME = "embedded"


class Transport(SqlalchemyTransport):
    polling_interval = 0.05


def register() -> None:
    """Make `embedded+<sqlalchemy url>` a kombu transport (idempotent)."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
