"""One transaction id looked up on the ledger: `saga ledger tx TXID`.

What an operator needs to settle a step whose outcome is unknown: whether the
ledger has the transaction at all, its validation code and block (qscc
``GetTransactionByID`` and ``GetBlockByTxID``), the saga records it writes (from
its read/write set, as `saga audit` reads them), and what the chaincode holds
under each of those idempotency keys now (``GetRecord``). A record that names
another txid means another transaction of the step took effect.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from saga.adapters.fabric.ledger_scan import DEFAULT_NAMESPACE, record_writes
from saga.adapters.fabric.messages import validation_code_name
from saga.adapters.fabric.protos import common_pb2, proposal_pb2, transaction_pb2
from saga.core import sagafacts
from saga.core.errors import SagaError

TXID = re.compile(r"[0-9a-f]{64}")
# What a Fabric 2.5 peer's qscc says for a txid its ledger does not have.
_NO_SUCH_TX = "no such transaction id"


class Evaluator(Protocol):
    def evaluate(
        self,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[str | bytes] = (),
        *,
        timeout: float | None = None,
    ) -> bytes: ...


class TransactionNotFound(SagaError, LookupError):
    """The peer's ledger has no transaction with this id."""


@dataclass(frozen=True)
class KeyRecord:
    key: str
    # What the chaincode holds under the key now (None: no record).
    record: dict[str, Any] | None

    @property
    def written_by(self) -> str | None:
        txid = (self.record or {}).get("txid")
        return txid if isinstance(txid, str) else None


@dataclass(frozen=True)
class TxLookup:
    txid: str
    channel: str
    validation_code: int
    validation_code_name: str
    block: int
    timestamp: datetime | None
    chaincode: str
    # The idempotency keys whose records the transaction writes, the one it creates first.
    keys: tuple[str, ...]
    records: tuple[KeyRecord, ...]

    @property
    def valid(self) -> bool:
        return self.validation_code == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "txid": self.txid,
            "channel": self.channel,
            "validation_code": self.validation_code,
            "validation_code_name": self.validation_code_name,
            "valid": self.valid,
            "block": self.block,
            "timestamp": None if self.timestamp is None else self.timestamp.isoformat(),
            "chaincode": self.chaincode,
            "keys": list(self.keys),
            "records": [
                {
                    "key": r.key,
                    "record": r.record,
                    "written_by": r.written_by,
                    "written_by_this_transaction": r.written_by == self.txid,
                }
                for r in self.records
            ],
        }


def check_txid(txid: str) -> str:
    """A Fabric transaction id as the ledger spells it, or ValueError saying what one is."""
    candidate = txid.strip().lower()
    if not TXID.fullmatch(candidate):
        raise ValueError(
            f"{txid!r} is not a transaction id: a Fabric txid is 64 hexadecimal digits "
            "(`saga show ID` lists a step's txids)"
        )
    return candidate


def find_transaction(client: Evaluator, channel: str, txid: str) -> tuple[bytes, int, int]:
    """(envelope, validation code, block number); TransactionNotFound if the ledger has none."""
    try:
        raw = client.evaluate(channel, "qscc", "GetTransactionByID", [channel, txid])
    except Exception as exc:
        if _NO_SUCH_TX in str(exc).lower():
            raise TransactionNotFound(txid) from exc
        raise
    processed = transaction_pb2.ProcessedTransaction.FromString(raw)
    block = common_pb2.Block.FromString(
        client.evaluate(channel, "qscc", "GetBlockByTxID", [channel, txid])
    )
    return (
        processed.transactionEnvelope.SerializeToString(),
        int(processed.validationCode),
        int(block.header.number),
    )


def _chaincode_of(envelope: bytes) -> str:
    payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(envelope).payload)
    header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
    extension = proposal_pb2.ChaincodeHeaderExtension.FromString(header.extension)
    return str(extension.chaincode_id.name)


def lookup_transaction(
    client: Evaluator,
    channel: str,
    txid: str,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    timeout: float | None = None,
) -> TxLookup:
    """The transaction's code, block, and the chaincode's record of each key it writes."""
    envelope, code, block = find_transaction(client, channel, txid)
    chaincode = _chaincode_of(envelope)
    writes = record_writes(envelope, chaincode or namespace)
    keys: tuple[str, ...] = ()
    timestamp = None
    if writes is not None:
        timestamp = writes.timestamp
        created = [w.key for w in writes.writes if w.creates]
        keys = tuple(dict.fromkeys([*created, *(w.key for w in writes.writes)]))
    records = tuple(
        KeyRecord(
            key,
            sagafacts.parse_record(
                client.evaluate(channel, chaincode, sagafacts.GET_RECORD, [key], timeout=timeout)
            ),
        )
        for key in keys
    )
    return TxLookup(
        txid=txid,
        channel=channel,
        validation_code=code,
        validation_code_name=validation_code_name(code),
        block=block,
        timestamp=timestamp,
        chaincode=chaincode,
        keys=keys,
        records=records,
    )
