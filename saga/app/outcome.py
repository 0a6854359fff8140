"""What handling one step message came to: the step handler's and the chain executor's verdict."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    APPLIED = "applied"  # the step (or compensation) ran and its result was recorded
    DUPLICATE = "duplicate"  # the inbox had this message already
    STALE = "stale"  # the saga no longer waits for this step/attempt
    # A chain step's transaction was (re)submitted; the step stays pending until a
    # later message (commit watcher, re-check, retry) finds its outcome.
    SUBMITTED = "submitted"
    # A chain step found the ledger unreachable; the same attempt runs again later.
    WAITING = "waiting"
