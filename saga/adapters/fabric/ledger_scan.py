"""What the ledger itself says: every transaction writing saga records, block by block.

Reads the channel through the query system chaincode (qscc ``GetChainInfo``,
then ``GetBlockByNumber`` for each block), unpacks each endorser transaction's
read/write set and keeps the writes to ``record:<idempotency key>`` in the
chaincode's namespace. The validation code of each transaction comes from the
block's TRANSACTIONS_FILTER metadata, the only place a committed block says
which of its transactions count.

A transaction *creates* the record of a key when the record it writes names the
transaction itself (``"txid"``: the chaincode fills it from the proposal). A
reversal also rewrites the original record (``reversed_by``), which keeps the
original's txid, so it creates only its own key. Counting VALID creators per
key is therefore exactly "VALID transactions per idempotency key", and more
than one is the duplicate that the chain step protocol must never allow.

Used by ``saga audit`` (``LedgerScan`` is the ledger scan port's adapter,
saga.ports.ledger_scan) and directly by tests (``ledger_counts``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import import_module
from typing import Any, Protocol

from saga.adapters.fabric.protos import (
    common_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from saga.core.chain import VALID

# No stubs ship with the protos, like saga.adapters.fabric.protos.
_ledger_pb2: Any = import_module("fabric_protos.common.ledger_pb2")
_rwset_pb2: Any = import_module("fabric_protos.ledger.rwset.rwset_pb2")
_kv_rwset_pb2: Any = import_module("fabric_protos.ledger.rwset.kvrwset.kv_rwset_pb2")

RECORD_PREFIX = "record:"
DEFAULT_NAMESPACE = "sagafacts"
# A block without a TRANSACTIONS_FILTER entry for a transaction (never on a
# committed Fabric block): counted as not valid.
NO_CODE = -1

Progress = Callable[[int, int], None]  # (blocks done, blocks to do)


class Evaluator(Protocol):
    """A blocking Gateway client's query call (GatewayClient fits)."""

    def evaluate(
        self, channel: str, chaincode: str, function: str, args: Sequence[str | bytes] = ()
    ) -> bytes: ...


@dataclass(frozen=True)
class RecordWrite:
    key: str  # the idempotency key, without the "record:" prefix
    creates: bool
    deleted: bool = False


@dataclass(frozen=True)
class TxWrites:
    """One transaction's writes to saga records, from its envelope alone."""

    txid: str
    timestamp: datetime | None
    writes: tuple[RecordWrite, ...]

    @property
    def created(self) -> tuple[str, ...]:
        return tuple(w.key for w in self.writes if w.creates)


@dataclass(frozen=True)
class LedgerTx:
    txid: str
    block: int
    index: int
    code: int
    timestamp: datetime | None
    created: tuple[str, ...]
    written: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return self.code == VALID


@dataclass(frozen=True)
class ScanCounts:
    blocks: int
    transactions: int  # transactions writing saga records, any code
    valid: int
    invalid: int
    keys: int  # idempotency keys with at least one VALID creator
    duplicate_keys: int  # keys with more than one VALID creator
    duplicate_transactions: int  # VALID creators beyond the first, summed over keys


@dataclass
class LedgerScan:
    channel: str
    namespace: str
    start: int
    height: int
    txs: list[LedgerTx] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_txid: dict[str, LedgerTx] = {}
        for tx in self.txs:
            self._index(tx)

    def _index(self, tx: LedgerTx) -> None:
        # A txid is VALID at most once in Fabric; an earlier copy keeps its code.
        self._by_txid.setdefault(tx.txid, tx)

    def add(self, tx: LedgerTx) -> None:
        self.txs.append(tx)
        self._index(tx)

    @property
    def transaction_count(self) -> int:
        return len(self.txs)

    def get(self, txid: str) -> LedgerTx | None:
        return self._by_txid.get(txid)

    def is_valid(self, txid: str) -> bool:
        tx = self._by_txid.get(txid)
        return tx is not None and tx.valid

    def valid_by_key(self) -> dict[str, list[LedgerTx]]:
        found: dict[str, list[LedgerTx]] = defaultdict(list)
        for tx in self.txs:
            if tx.valid:
                for key in tx.created:
                    found[key].append(tx)
        return dict(found)

    def duplicates(self) -> dict[str, list[LedgerTx]]:
        return {k: txs for k, txs in self.valid_by_key().items() if len(txs) > 1}

    def keys_created_by(self, envelope: bytes) -> tuple[str, ...]:
        """The keys a stored envelope creates in this scan's namespace (the port's reading)."""
        writes = record_writes(envelope, self.namespace)
        return () if writes is None else writes.created

    def counts(self) -> ScanCounts:
        by_key = self.valid_by_key()
        valid = sum(1 for tx in self.txs if tx.valid)
        return ScanCounts(
            blocks=self.height - self.start,
            transactions=len(self.txs),
            valid=valid,
            invalid=len(self.txs) - valid,
            keys=len(by_key),
            duplicate_keys=sum(1 for txs in by_key.values() if len(txs) > 1),
            duplicate_transactions=sum(len(txs) - 1 for txs in by_key.values()),
        )


def record_writes(envelope: bytes, namespace: str = DEFAULT_NAMESPACE) -> TxWrites | None:
    """The saga-record writes of a signed transaction envelope; None if not an endorser tx.

    Works on an envelope from a block and on one a worker stored before Submit.
    """
    env = common_pb2.Envelope.FromString(envelope)
    payload = common_pb2.Payload.FromString(env.payload)
    header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
    if header.type != common_pb2.ENDORSER_TRANSACTION:
        return None
    timestamp = header.timestamp.ToDatetime(tzinfo=UTC) if header.HasField("timestamp") else None
    writes: list[RecordWrite] = []
    tx = transaction_pb2.Transaction.FromString(payload.data)
    for action in tx.actions:
        action_payload = transaction_pb2.ChaincodeActionPayload.FromString(action.payload)
        response_payload = proposal_response_pb2.ProposalResponsePayload.FromString(
            action_payload.action.proposal_response_payload
        )
        chaincode_action = proposal_pb2.ChaincodeAction.FromString(response_payload.extension)
        writes.extend(_writes(chaincode_action.results, namespace, header.tx_id))
    return TxWrites(txid=header.tx_id, timestamp=timestamp, writes=tuple(writes))


def _writes(results: bytes, namespace: str, txid: str) -> Iterable[RecordWrite]:
    if not results:
        return
    rwset = _rwset_pb2.TxReadWriteSet.FromString(results)
    for ns in rwset.ns_rwset:
        if ns.namespace != namespace:
            continue
        kv = _kv_rwset_pb2.KVRWSet.FromString(ns.rwset)
        for write in kv.writes:
            if not write.key.startswith(RECORD_PREFIX):
                continue
            key = write.key[len(RECORD_PREFIX) :]
            yield RecordWrite(key, _names_tx(write.value, txid), bool(write.is_delete))


def _names_tx(value: bytes, txid: str) -> bool:
    try:
        record = json.loads(value)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("txid") == txid


def chain_height(client: Evaluator, channel: str) -> int:
    raw = client.evaluate(channel, "qscc", "GetChainInfo", [channel])
    return int(_ledger_pb2.BlockchainInfo.FromString(raw).height)


def block_transactions(
    raw_block: bytes, namespace: str = DEFAULT_NAMESPACE
) -> tuple[int, list[LedgerTx]]:
    """(block number, its transactions that write saga records) from a serialized block."""
    block = common_pb2.Block.FromString(raw_block)
    number = int(block.header.number)
    metadata = block.metadata.metadata
    index = common_pb2.TRANSACTIONS_FILTER
    codes = bytes(metadata[index]) if len(metadata) > index else b""
    found: list[LedgerTx] = []
    for i, envelope in enumerate(block.data.data):
        writes = record_writes(envelope, namespace)
        if writes is None or not writes.writes:
            continue
        found.append(
            LedgerTx(
                txid=writes.txid,
                block=number,
                index=i,
                code=codes[i] if i < len(codes) else NO_CODE,
                timestamp=writes.timestamp,
                created=writes.created,
                written=tuple(w.key for w in writes.writes),
            )
        )
    return number, found


def scan_ledger(
    client: Evaluator,
    channel: str,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    start: int = 0,
    progress: Progress | None = None,
) -> LedgerScan:
    """Read blocks ``start`` .. height-1 and collect every saga-record transaction."""
    height = chain_height(client, channel)
    scan = LedgerScan(channel=channel, namespace=namespace, start=start, height=height)
    total = max(0, height - start)
    for n in range(start, height):
        raw = client.evaluate(channel, "qscc", "GetBlockByNumber", [channel, str(n)])
        _, txs = block_transactions(raw, namespace)
        for tx in txs:
            scan.add(tx)
        if progress is not None:
            progress(n - start + 1, total)
    return scan


def ledger_counts(
    client: Evaluator, channel: str, namespace: str = DEFAULT_NAMESPACE
) -> ScanCounts:
    """The whole channel's counts: for tests asserting "one VALID transaction per key"."""
    return scan_ledger(client, channel, namespace).counts()
