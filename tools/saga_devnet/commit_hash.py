"""The peer's COMMIT_HASH block metadata, computed as core/ledger/kvledger does in Fabric 2.5.

kv_ledger.go addBlockCommitHash: SHA-256 over
    varint(len(TRANSACTIONS_FILTER)) || TRANSACTIONS_FILTER || update-batch bytes || previous hash
where the previous hash is empty for block 1 (nothing is hashed for the genesis block), and the
update-batch bytes are txmgr.deterministicBytesForPubAndHashUpdates: a txmgr.Updates message of
the block's public state writes (last write per key wins; VALID transactions only), namespaces
sorted, keys sorted within a namespace, the namespace named only on its first entry, each
entry's version the (block, tx) height in ledger/util's order-preserving encoding. The config
namespace ("") is skipped there, and the devnet has no private data (hashed writes), so for
the devnet's blocks this is Fabric's value exactly, not an approximation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from saga_devnet.txparse import parse_envelope

VALID = 0

# (namespace, key) -> (value or None for a delete, (block, tx))
Updates = dict[tuple[str, str], tuple[bytes | None, tuple[int, int]]]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _bytes_field(number: int, value: bytes) -> bytes:
    # proto3 leaves empty strings and bytes out of the encoding.
    return _field(number, 2, _varint(len(value)) + value) if value else b""


def order_preserving_uint64(n: int) -> bytes:
    """common/ledger/util.EncodeOrderPreservingVarUint64: the length, then the big-endian
    bytes without leading zeros (0 is the single byte 0x00)."""
    raw = n.to_bytes(8, "big").lstrip(b"\x00")
    return bytes([len(raw)]) + raw


def version_bytes(block: int, tx: int) -> bytes:
    return order_preserving_uint64(block) + order_preserving_uint64(tx)


def block_updates(block_num: int, envelopes: Iterable[bytes], codes: bytes) -> Updates:
    """The public writes a block applies to world state, as the peer's update batch holds them."""
    updates: Updates = {}
    for txnum, raw in enumerate(envelopes):
        if txnum >= len(codes) or codes[txnum] != VALID:
            continue
        try:
            tx = parse_envelope(raw)
        except ValueError:
            continue
        for ns, kv in tx.kv_sets():
            for w in kv.writes:
                value = None if w.is_delete else bytes(w.value)
                updates[(ns, w.key)] = (value, (block_num, txnum))
    return updates


def update_batch_bytes(updates: Updates) -> bytes:
    """txmgr.Updates{kvwrites} in Go's proto encoding (fields in number order)."""
    out = bytearray()
    last_ns: str | None = None
    for (ns, key), (value, (block, tx)) in sorted(updates.items()):
        if ns == "":
            continue
        entry = _bytes_field(1, ns.encode()) if ns != last_ns else b""
        last_ns = ns
        entry += _bytes_field(3, key.encode())
        if value is None:
            entry += _field(4, 0, b"\x01")  # isDelete
        else:
            entry += _bytes_field(5, value)
        entry += _bytes_field(6, version_bytes(block, tx))
        out += _field(1, 2, _varint(len(entry)) + entry)
    return bytes(out)


def commit_hash(tx_filter: bytes, updates: Updates, previous: bytes) -> bytes:
    data = _varint(len(tx_filter)) + tx_filter + update_batch_bytes(updates) + previous
    return hashlib.sha256(data).digest()
