"""Unpacking of the nested protobuf layers of a Fabric transaction envelope."""

from __future__ import annotations

from dataclasses import dataclass, field

from saga_devnet.protos import (
    chaincode_event_pb2,
    common_pb2,
    kv_rwset_pb2,
    proposal_pb2,
    proposal_response_pb2,
    rwset_pb2,
    transaction_pb2,
)


@dataclass
class ParsedTx:
    envelope: common_pb2.Envelope
    payload: common_pb2.Payload
    channel_header: common_pb2.ChannelHeader
    signature_header: common_pb2.SignatureHeader
    chaincode_name: str = ""
    prp_bytes: bytes = b""
    proposal_hash: bytes = b""
    action: proposal_pb2.ChaincodeAction | None = None
    endorsements: list[proposal_response_pb2.Endorsement] = field(default_factory=list)
    chaincode_proposal_payload: bytes = b""
    action_header: bytes = b""

    @property
    def txid(self) -> str:
        return self.channel_header.tx_id

    def kv_sets(self) -> list[tuple[str, kv_rwset_pb2.KVRWSet]]:
        return kv_sets(self.action.results if self.action else b"")

    def event(self) -> chaincode_event_pb2.ChaincodeEvent | None:
        if not self.action or not self.action.events:
            return None
        ev = chaincode_event_pb2.ChaincodeEvent()
        ev.ParseFromString(self.action.events)
        return ev


def kv_sets(results: bytes) -> list[tuple[str, kv_rwset_pb2.KVRWSet]]:
    if not results:
        return []
    txrw = rwset_pb2.TxReadWriteSet()
    txrw.ParseFromString(results)
    out = []
    for ns in txrw.ns_rwset:
        kv = kv_rwset_pb2.KVRWSet()
        kv.ParseFromString(ns.rwset)
        out.append((ns.namespace, kv))
    return out


def parse_envelope(raw: bytes) -> ParsedTx:
    """Parse the layers; raise ValueError when the envelope is not a well-formed transaction."""
    try:
        env = common_pb2.Envelope()
        env.ParseFromString(raw)
        payload = common_pb2.Payload()
        payload.ParseFromString(env.payload)
        chdr = common_pb2.ChannelHeader()
        chdr.ParseFromString(payload.header.channel_header)
        shdr = common_pb2.SignatureHeader()
        shdr.ParseFromString(payload.header.signature_header)
    except Exception as exc:
        raise ValueError(f"malformed envelope: {exc}") from exc
    parsed = ParsedTx(env, payload, chdr, shdr)
    if chdr.type != common_pb2.ENDORSER_TRANSACTION:
        return parsed
    try:
        tx = transaction_pb2.Transaction()
        tx.ParseFromString(payload.data)
        if len(tx.actions) != 1:
            raise ValueError(f"expected exactly one action, got {len(tx.actions)}")
        cap = transaction_pb2.ChaincodeActionPayload()
        cap.ParseFromString(tx.actions[0].payload)
        prp = proposal_response_pb2.ProposalResponsePayload()
        prp.ParseFromString(cap.action.proposal_response_payload)
        action = proposal_pb2.ChaincodeAction()
        action.ParseFromString(prp.extension)
        ext = proposal_pb2.ChaincodeHeaderExtension()
        ext.ParseFromString(chdr.extension)
    except Exception as exc:
        raise ValueError(f"malformed transaction: {exc}") from exc
    parsed.chaincode_name = ext.chaincode_id.name
    parsed.prp_bytes = cap.action.proposal_response_payload
    parsed.proposal_hash = prp.proposal_hash
    parsed.action = action
    parsed.endorsements = list(cap.action.endorsements)
    parsed.chaincode_proposal_payload = cap.chaincode_proposal_payload
    parsed.action_header = tx.actions[0].header
    return parsed
