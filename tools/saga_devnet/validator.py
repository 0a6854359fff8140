"""Block validation as a Fabric 2.5 committer does it, producing TRANSACTIONS_FILTER codes.

Per transaction, in Fabric's order: well-formedness and creator signature (msgvalidation),
txid derivation, duplicate txid (in the ledger, or earlier in the same block), endorsement
policy (VSCC), then MVCC and phantom reads against committed state plus the writes of the
block's earlier VALID transactions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from saga.adapters.fabric import crypto
from saga_devnet.faults import Faults
from saga_devnet.ledger_store import LIFECYCLE, LedgerStore
from saga_devnet.msp import IdentityError, MembershipRegistry
from saga_devnet.policy import Rule, is_satisfied
from saga_devnet.protos import common_pb2, kv_rwset_pb2
from saga_devnet.protos import transaction_pb2 as tx_pb2
from saga_devnet.txparse import ParsedTx, parse_envelope

Version = tuple[int, int]
# (namespace, key) -> version written earlier in this block, or None when deleted there
BlockUpdates = dict[tuple[str, str], Version | None]


class Validator:
    def __init__(
        self,
        channel: str,
        registry: MembershipRegistry,
        policies: Callable[[str], Rule | None],
        store: LedgerStore,
        faults: Faults,
    ) -> None:
        self._channel = channel
        self._registry = registry
        self._policies = policies
        self._store = store
        self._faults = faults

    def validate(self, block_num: int, envelopes: list[bytes]) -> bytes:
        codes = bytearray()
        seen: set[str] = set()
        updates: BlockUpdates = {}
        for txnum, raw in enumerate(envelopes):
            code = self._validate_one(block_num, txnum, raw, seen, updates)
            codes.append(code)
        return bytes(codes)

    def _validate_one(
        self, block_num: int, txnum: int, raw: bytes, seen: set[str], updates: BlockUpdates
    ) -> int:
        try:
            tx = parse_envelope(raw)
        except ValueError:
            return tx_pb2.BAD_PAYLOAD
        code = self._check_message(tx)
        if code != tx_pb2.VALID:
            return code
        if tx.txid in seen or self._store.tx_status(tx.txid) is not None:
            return tx_pb2.DUPLICATE_TXID
        seen.add(tx.txid)
        code = self._check_endorsements(tx)
        if code != tx_pb2.VALID:
            return code
        code = self._check_reads(tx, updates)
        if code == tx_pb2.VALID and self._faults.take("force_mvcc_conflict"):
            code = tx_pb2.MVCC_READ_CONFLICT
        if code == tx_pb2.VALID:
            for ns, kv in tx.kv_sets():
                for w in kv.writes:
                    updates[(ns, w.key)] = None if w.is_delete else (block_num, txnum)
        return code

    def _check_message(self, tx: ParsedTx) -> int:
        chdr = tx.channel_header
        if chdr.type != common_pb2.ENDORSER_TRANSACTION:
            return tx_pb2.UNKNOWN_TX_TYPE
        if chdr.channel_id != self._channel:
            return tx_pb2.TARGET_CHAIN_NOT_FOUND
        try:
            creator = self._registry.deserialize(tx.signature_header.creator)
        except IdentityError:
            return tx_pb2.BAD_CREATOR_SIGNATURE
        if not creator.verify(tx.envelope.signature, tx.envelope.payload):
            return tx_pb2.BAD_CREATOR_SIGNATURE
        expected = crypto.compute_txid(tx.signature_header.nonce, tx.signature_header.creator)
        if chdr.tx_id != expected:
            return tx_pb2.BAD_PROPOSAL_TXID
        if tx.action is None:
            return tx_pb2.INVALID_ENDORSER_TRANSACTION
        # The action must belong to this header, and the endorsed response to this proposal.
        if tx.action_header != tx.payload.header.signature_header:
            return tx_pb2.INVALID_ENDORSER_TRANSACTION
        hdr = tx.payload.header
        phash = hashlib.sha256(
            hdr.channel_header + hdr.signature_header + tx.chaincode_proposal_payload
        ).digest()
        if phash != tx.proposal_hash:
            return tx_pb2.INVALID_ENDORSER_TRANSACTION
        return tx_pb2.VALID

    def _check_endorsements(self, tx: ParsedTx) -> int:
        rule = self._policies(tx.chaincode_name)
        if rule is None:
            return tx_pb2.INVALID_CHAINCODE
        assert tx.action is not None
        for ns, kv in tx.kv_sets():
            # Besides its own namespace, a transaction may only read `_lifecycle` (the
            # endorsing peer's read of the chaincode definition).
            if ns != tx.chaincode_name and (ns != LIFECYCLE or kv.writes):
                return tx_pb2.ILLEGAL_WRITESET
        signers: dict[bytes, tuple[str, str]] = {}
        for e in tx.endorsements:
            try:
                identity = self._registry.deserialize(e.endorser)
            except IdentityError:
                continue
            if identity.verify(e.signature, tx.prp_bytes + e.endorser):
                signers[e.endorser] = (identity.msp_id, identity.role)
        if not is_satisfied(rule, signers.values()):
            return tx_pb2.ENDORSEMENT_POLICY_FAILURE
        return tx_pb2.VALID

    def _current(self, ns: str, key: str, updates: BlockUpdates) -> Version | None:
        if (ns, key) in updates:
            return updates[(ns, key)]
        found = self._store.get_state(ns, key)
        return found[1] if found else None

    def _check_reads(self, tx: ParsedTx, updates: BlockUpdates) -> int:
        for ns, kv in tx.kv_sets():
            for r in kv.reads:
                seen = (r.version.block_num, r.version.tx_num) if r.HasField("version") else None
                if self._current(ns, r.key, updates) != seen:
                    return tx_pb2.MVCC_READ_CONFLICT
            for rq in kv.range_queries_info:
                if self._range_now(ns, rq, updates) != _range_seen(rq):
                    return tx_pb2.PHANTOM_READ_CONFLICT
        return tx_pb2.VALID

    def _range_now(
        self, ns: str, rq: kv_rwset_pb2.RangeQueryInfo, updates: BlockUpdates
    ) -> list[tuple[str, Version]]:
        # A range the chaincode stopped early covers [start, end] inclusive of end.
        end = rq.end_key if rq.itr_exhausted or not rq.end_key else rq.end_key + "\x00"
        current: dict[str, Version | None] = {
            k: v for k, _val, v in self._store.get_state_by_range(ns, rq.start_key, end)
        }
        for (uns, key), version in updates.items():
            if uns == ns and key >= rq.start_key and (not end or key < end):
                current[key] = version
        return sorted((k, v) for k, v in current.items() if v is not None)


def _range_seen(rq: kv_rwset_pb2.RangeQueryInfo) -> list[tuple[str, Version]]:
    return sorted((r.key, (r.version.block_num, r.version.tx_num)) for r in rq.raw_reads.kv_reads)
