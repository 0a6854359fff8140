"""The ledger port: what the orchestrator needs from a ledger for chain steps.

Pure typing and plain values, no gRPC or protobuf, so the orchestrator and its
fakes never import a Fabric client. The Fabric Gateway adapter in
``saga.adapters.fabric`` implements it.

A chain step runs prepare -> (persist) -> submit -> commit_status. The prepared
transaction is the signed envelope: its bytes are stored before submitting and
resubmitted unchanged after a crash, so a retry never creates a second
transaction id for the same step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from saga.core.chain import VALID as VALID
from saga.core.errors import SagaError
from saga.core.ledger_faults import FaultKind, LedgerFault

Arg = str | bytes

# Fabric's TxValidationCode numbers (peer/transaction.proto) the orchestrator
# decides on; any other code is simply "invalid". VALID is saga.core.chain's.
DUPLICATE_TXID = 9
ENDORSEMENT_POLICY_FAILURE = 10
MVCC_READ_CONFLICT = 11


@dataclass(frozen=True, slots=True)
class PreparedTx:
    """An endorsed, signed transaction that has not necessarily been submitted.

    ``envelope`` is everything needed to submit it again; ``txid`` and
    ``channel`` are read from it and kept beside it for lookups.
    """

    txid: str
    channel: str
    envelope: bytes

    def to_bytes(self) -> bytes:
        return self.envelope


@dataclass(frozen=True, slots=True)
class Submitted:
    """A transaction handed to the orderer; follow it with commit_status."""

    txid: str
    channel: str


@dataclass(frozen=True, slots=True)
class CommitResult:
    """How a transaction committed: Fabric's validation code and the block holding it."""

    txid: str
    code: int
    code_name: str
    block_number: int

    @property
    def valid(self) -> bool:
        return self.code == VALID


class LedgerError(SagaError):
    """Base of every ledger failure.

    ``fault`` says what the failure means (saga.core.ledger_faults): an adapter
    classifies what its ledger answered. Without one, ``retryable`` decides:
    unavailable if true, else rejected.
    """

    def __init__(
        self,
        message: str,
        *,
        txid: str | None = None,
        retryable: bool = False,
        fault: LedgerFault | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.txid = txid
        if fault is None:
            fault = (
                LedgerFault(FaultKind.UNAVAILABLE, "the ledger is unreachable")
                if retryable
                else LedgerFault(FaultKind.REJECTED, "the ledger rejected the call")
            )
        self.fault = fault
        self.retryable = fault.kind is FaultKind.UNAVAILABLE

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields would be lost by the default exception pickling,
        # and task queues pickle exceptions across processes.
        # The fault travels too: rebuilt from `retryable` alone, a misconfiguration
        # would come back as a rejection.
        return (_rebuild_ledger_error, (type(self), self.message, self.txid, self.fault))


def _rebuild_ledger_error(
    cls: type[LedgerError], message: str, txid: str | None, fault: LedgerFault
) -> LedgerError:
    return cls(message, txid=txid, fault=fault)


class EndorseFailed(LedgerError):
    """Endorsement did not produce a transaction. Nothing reached the orderer."""


class EvaluateFailed(LedgerError):
    """A query could not be answered."""


class SubmitFailed(LedgerError):
    """Submitting may or may not have reached the orderer: the outcome is unknown.

    Ask commit_status for the txid; resubmit the same envelope if still unknown.
    """


class Unanswered(StrEnum):
    """Why a commit status wait ended without an answer (StatusUnknown.unanswered)."""

    # The wait reached its deadline: the transaction may simply not be in a block yet.
    DEADLINE = "deadline"
    # The peer could not be reached, or the call was cut (a closed channel).
    UNREACHABLE = "unreachable"
    # The peer answered with a refusal (permission, unknown channel, ...).
    REFUSED = "refused"


class StatusUnknown(LedgerError):
    """The commit status could not be learned now (deadline, peer unavailable, ...).

    Distinct from a transaction that committed with an invalid code, which is a
    CommitResult with ``valid`` false. ``unanswered`` says why; an adapter that
    cannot tell leaves UNREACHABLE.
    """

    @property
    def unanswered(self) -> Unanswered:
        return Unanswered.UNREACHABLE


class Ledger(Protocol):
    """Blocking operations a chain step needs."""

    def prepare(
        self,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[Arg] = (),
        *,
        endorsing_orgs: Sequence[str] | None = None,
        transient: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> PreparedTx:
        """Build, sign and endorse; the txid is fixed. Raises EndorseFailed."""
        ...

    def submit(self, prepared: PreparedTx | bytes, *, timeout: float | None = None) -> Submitted:
        """Hand the envelope to the orderer. Raises SubmitFailed (outcome unknown)."""
        ...

    def commit_status(
        self, channel: str, txid: str, *, timeout: float | None = None
    ) -> CommitResult:
        """Wait (up to ``timeout`` seconds) for the txid's commit. Raises StatusUnknown."""
        ...

    def evaluate(
        self,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[Arg] = (),
        *,
        target_orgs: Sequence[str] | None = None,
        transient: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Run a query on a peer; nothing is ordered. Raises EvaluateFailed."""
        ...


@runtime_checkable
class AsyncCommitStatus(Protocol):
    """Commit-status waits for asyncio, so one process can follow thousands of commits."""

    async def commit_status(
        self, channel: str, txid: str, *, timeout: float | None = None
    ) -> CommitResult: ...
