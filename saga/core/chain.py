"""The verify-before-resubmit decision for a chain step (pure).

A chain step may have several ledger attempts, one row each, every txid kept.
Before anything is sent the worker asks the ledger about each attempt whose
outcome it does not know yet, and (when every attempt is final) reads the
chaincode's record for the step's idempotency key. This module turns those
answers into the one safe next move. The table in the README's design notes is
this function; tests/unit/test_chain_decision.py checks it exhaustively.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

# Fabric's TxValidationCode for a valid transaction (peer/transaction.proto): the
# one definition; the ledger port, the Fabric adapter and the audit import it.
VALID = 0


class AttemptState(StrEnum):
    # Endorsed and signed; the envelope and txid are committed to the database
    # before Submit is called.
    PREPARED = "prepared"
    # Submit returned; the orderer has the envelope.
    SUBMITTED = "submitted"
    # The validation code is known and final for this txid.
    COMMITTED = "committed"


@dataclass(frozen=True)
class Attempt:
    txid: str
    state: AttemptState
    code: int | None = None

    def __post_init__(self) -> None:
        if (self.state is AttemptState.COMMITTED) != (self.code is not None):
            raise ValueError("a committed attempt has a code, and only a committed one")


@dataclass(frozen=True)
class Committed:
    """The ledger says this txid committed with `code` (first commit wins)."""

    code: int
    block: int | None = None


@dataclass(frozen=True)
class Unknown:
    """The ledger could not say (not committed yet, deadline, peer unavailable)."""

    why: str = ""


Answer = Committed | Unknown


class KeyCheck(StrEnum):
    NOT_ASKED = "not-asked"
    ABSENT = "absent"


@dataclass(frozen=True)
class KeyPresent:
    """The chaincode holds a record for the idempotency key, written by `txid`."""

    txid: str


KeyAnswer = KeyCheck | KeyPresent


@dataclass(frozen=True)
class Done:
    """The step took effect in transaction `txid`; never send anything for it again."""

    txid: str
    how: str


@dataclass(frozen=True)
class Resubmit:
    """Outcome unknown: resubmit these same stored envelopes (same txids)."""

    txids: tuple[str, ...]


@dataclass(frozen=True)
class AskKey:
    """Every attempt is final and invalid: read the idempotency record first."""


@dataclass(frozen=True)
class PrepareNew:
    """No transaction of this step can ever become VALID: a new one may be prepared."""


Decision = Done | Resubmit | AskKey | PrepareNew


def final_code(attempt: Attempt, answers: Mapping[str, Answer]) -> int | None:
    """The attempt's validation code if known (recorded or just learned), else None."""
    if attempt.code is not None:
        return attempt.code
    answer = answers.get(attempt.txid)
    return answer.code if isinstance(answer, Committed) else None


def decide(
    attempts: Sequence[Attempt],
    answers: Mapping[str, Answer],
    key: KeyAnswer = KeyCheck.NOT_ASKED,
) -> Decision:
    for attempt in attempts:
        if final_code(attempt, answers) == VALID:
            return Done(attempt.txid, "committed VALID")
    in_doubt = tuple(a.txid for a in attempts if final_code(a, answers) is None)
    if in_doubt:
        # Any of them may still commit; a new txid could commit beside it.
        return Resubmit(in_doubt)
    if not attempts:
        # Nothing was ever sent (every envelope is recorded before Submit), and the
        # endorsement of a new proposal reads the key itself: a record refuses it.
        return PrepareNew()
    if isinstance(key, KeyPresent):
        return Done(key.txid, "idempotency record on the ledger")
    if key is KeyCheck.NOT_ASKED:
        return AskKey()
    return PrepareNew()
