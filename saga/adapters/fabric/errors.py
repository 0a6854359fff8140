"""One error type per Gateway step, each carrying the txid and the gRPC status.

The Fabric gateway explains a failure in ``grpc-status-details-bin`` trailing
metadata: a google.rpc.Status whose details are gateway.ErrorDetail, one per
peer or orderer that refused (for example the chaincode's own error message).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from saga.adapters.fabric.protos import gateway_pb2
from saga.core.ledger_faults import Operation, classify
from saga.ports.ledger import (
    CommitResult,
    EndorseFailed,
    EvaluateFailed,
    LedgerError,
    StatusUnknown,
    SubmitFailed,
    Unanswered,
)

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """What one peer or orderer said: gateway.ErrorDetail."""

    address: str
    msp_id: str
    message: str


def parse_status_details(raw: bytes) -> tuple[ErrorDetail, ...]:
    """ErrorDetails from a serialized google.rpc.Status; other detail types are skipped."""
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return ()
    details = []
    for any_detail in status.details:
        detail = gateway_pb2.ErrorDetail()
        if any_detail.Is(gateway_pb2.ErrorDetail.DESCRIPTOR) and any_detail.Unpack(detail):
            details.append(ErrorDetail(detail.address, detail.msp_id, detail.message))
    return tuple(details)


def _details_from_metadata(metadata: Iterable[Any] | None) -> tuple[ErrorDetail, ...]:
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return parse_status_details(value)
    return ()


class GatewayError(LedgerError):
    """A Gateway call failed with a gRPC status."""

    step = "gateway call"
    operation = Operation.CONNECT

    def __init__(
        self,
        *,
        txid: str | None,
        code: grpc.StatusCode | None,
        status_message: str = "",
        details: tuple[ErrorDetail, ...] = (),
    ) -> None:
        self.code = code
        self.status_message = status_message
        self.details = details
        code_name = code.name if code is not None else "UNKNOWN"
        text = f"{self.step} failed for transaction {txid}: {code_name}: {status_message}"
        for d in details:
            text += f"; {d.address} ({d.msp_id}): {d.message}"
        fault = classify(
            self.operation,
            code.name if code is not None else None,
            status_message,
            [d.message for d in details],
        )
        super().__init__(text, txid=txid, fault=fault)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, txid: str | None) -> GatewayError:
        """Classify a failed call from the sync (grpc.RpcError) or asyncio (AioRpcError) API."""
        code = error.code() if hasattr(error, "code") else None
        message = error.details() if hasattr(error, "details") else str(error)
        metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        return cls(
            txid=txid,
            code=code,
            status_message=message or "",
            details=_details_from_metadata(metadata),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery and multiprocessing pickle exceptions; keyword-only init needs this.
        return (
            _rebuild,
            (type(self), self.txid, self.code, self.status_message, self.details),
        )


def _rebuild(
    cls: type[GatewayError],
    txid: str | None,
    code: grpc.StatusCode | None,
    status_message: str,
    details: tuple[ErrorDetail, ...],
) -> GatewayError:
    return cls(txid=txid, code=code, status_message=status_message, details=details)


class EndorseError(GatewayError, EndorseFailed):
    """Endorsement failed: no transaction exists; nothing reached the orderer."""

    step = "endorse"
    operation = Operation.ENDORSE


class EvaluateError(GatewayError, EvaluateFailed):
    step = "evaluate"
    operation = Operation.EVALUATE


class SubmitError(GatewayError, SubmitFailed):
    """Submit failed: the envelope may still have been ordered; the outcome is unknown."""

    step = "submit"
    operation = Operation.SUBMIT


class CommitStatusError(GatewayError, StatusUnknown):
    """The commit status could not be obtained; the transaction's fate is unknown."""

    step = "commit status"
    operation = Operation.COMMIT_STATUS

    @property
    def unanswered(self) -> Unanswered:
        """The gRPC status read at this boundary, so the watcher never sees a gRPC code."""
        if self.code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return Unanswered.DEADLINE
        if self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, None):
            return Unanswered.UNREACHABLE
        return Unanswered.REFUSED


class CommitError(LedgerError):
    """The transaction committed, with a validation code other than VALID. Final."""

    def __init__(self, result: CommitResult) -> None:
        self.result = result
        self.code = result.code
        self.block_number = result.block_number
        super().__init__(
            f"transaction {result.txid} committed in block {result.block_number} "
            f"as invalid: {result.code} ({result.code_name})",
            txid=result.txid,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result,))
