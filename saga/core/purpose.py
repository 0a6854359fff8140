"""Do or undo: the one vocabulary for a step's effect and its reversal.

A step message runs a step's action (`DO`) or its compensation (`UNDO`); a chain
step's ledger transaction is its effect (`DO`) or its reversal (`UNDO`), and the
idempotency key names which. One type for both, so a message's phase and a
ledger attempt's purpose compare without translation.
"""

from __future__ import annotations

from enum import StrEnum


class Purpose(StrEnum):
    """A step's effect (do) or its reversal (undo)."""

    DO = "do"
    UNDO = "undo"
