"""The prepared transaction: the endorsed envelope, signed by the client.

Its bytes are the whole transaction. Stored before submission and rebuilt with
``from_bytes`` after a crash, it is resubmitted unchanged, same txid, so the
ledger can never hold two valid transactions for one prepared step.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from saga.adapters.fabric import protos
from saga.adapters.fabric.identity import SigningIdentity
from saga.adapters.fabric.protos import (
    common_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from saga.ports.ledger import PreparedTx


def _channel_header(payload_bytes: bytes) -> protos.ChannelHeader:
    payload = common_pb2.Payload.FromString(payload_bytes)
    return common_pb2.ChannelHeader.FromString(payload.header.channel_header)


@dataclass(frozen=True, slots=True)
class PreparedTransaction(PreparedTx):
    @classmethod
    def sign(cls, unsigned: protos.Envelope, identity: SigningIdentity) -> PreparedTransaction:
        """Sign the envelope the gateway prepared; it comes back with an empty signature."""
        envelope = common_pb2.Envelope(
            payload=unsigned.payload, signature=identity.sign(unsigned.payload)
        )
        return cls.from_bytes(envelope.SerializeToString())

    @classmethod
    def from_bytes(cls, data: bytes) -> PreparedTransaction:
        """Rebuild from stored bytes; refuses anything that is not a signed transaction envelope."""
        try:
            envelope = common_pb2.Envelope.FromString(data)
            header = _channel_header(envelope.payload)
        except DecodeError as exc:
            raise ValueError(f"not a Fabric transaction envelope: {exc}") from exc
        if not envelope.signature:
            raise ValueError("the envelope is not signed")
        if header.type != common_pb2.ENDORSER_TRANSACTION or not header.tx_id:
            raise ValueError("the envelope is not an endorser transaction")
        return cls(txid=header.tx_id, channel=header.channel_id, envelope=bytes(data))

    def envelope_proto(self) -> protos.Envelope:
        return common_pb2.Envelope.FromString(self.envelope)

    def result(self) -> bytes:
        """The chaincode's return value recorded in the endorsement (empty if none)."""
        payload = common_pb2.Payload.FromString(self.envelope_proto().payload)
        tx = transaction_pb2.Transaction.FromString(payload.data)
        if not tx.actions:
            return b""
        action_payload = transaction_pb2.ChaincodeActionPayload.FromString(tx.actions[0].payload)
        response_payload = proposal_response_pb2.ProposalResponsePayload.FromString(
            action_payload.action.proposal_response_payload
        )
        action = proposal_pb2.ChaincodeAction.FromString(response_payload.extension)
        return bytes(action.response.payload)


def as_prepared(prepared: PreparedTx | bytes) -> PreparedTx:
    if isinstance(prepared, PreparedTx):
        return prepared
    return PreparedTransaction.from_bytes(prepared)
