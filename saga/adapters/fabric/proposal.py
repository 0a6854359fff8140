"""Transaction proposals, built the way Fabric's own clients build them.

The transaction id is fixed here, before anything is sent: it is
hex(SHA-256(nonce || creator)) and it is also the ChannelHeader's tx_id, which
peers check. Storing it before endorsement lets a crashed worker find the
transaction again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from saga.adapters.fabric import crypto, protos
from saga.adapters.fabric.identity import SigningIdentity
from saga.adapters.fabric.protos import chaincode_pb2, common_pb2, proposal_pb2

Arg = str | bytes


def _as_bytes(arg: Arg) -> bytes:
    return arg.encode() if isinstance(arg, str) else bytes(arg)


@dataclass(frozen=True, slots=True)
class Proposal:
    """A signed proposal, ready to send for endorsement or evaluation."""

    txid: str
    channel: str
    chaincode: str
    proposal_bytes: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    endorsing_orgs: tuple[str, ...] = ()

    def signed_proposal(self) -> protos.SignedProposal:
        return proposal_pb2.SignedProposal(
            proposal_bytes=self.proposal_bytes, signature=self.signature
        )


def build_proposal(
    identity: SigningIdentity,
    channel: str,
    chaincode: str,
    function: str,
    args: Sequence[Arg] = (),
    *,
    transient: Mapping[str, bytes] | None = None,
    endorsing_orgs: Sequence[str] | None = None,
    nonce: bytes | None = None,
    timestamp: timestamp_pb2.Timestamp | None = None,
) -> Proposal:
    """Build and sign a chaincode invocation proposal.

    ``function`` may name a contract as ``"Contract:function"``; chaincode
    arguments are the function name followed by ``args``. ``nonce`` and
    ``timestamp`` are for tests that need a reproducible proposal.
    """
    if not channel or not chaincode or not function:
        raise ValueError("channel, chaincode and function are required")
    nonce = crypto.new_nonce() if nonce is None else nonce
    creator = identity.creator
    txid = crypto.compute_txid(nonce, creator)

    chaincode_id = chaincode_pb2.ChaincodeID(name=chaincode)
    invocation = chaincode_pb2.ChaincodeInvocationSpec(
        chaincode_spec=chaincode_pb2.ChaincodeSpec(
            # The type is ignored by peers at invocation; NODE is what the
            # reference Go and Node gateway clients send.
            type=chaincode_pb2.ChaincodeSpec.NODE,
            chaincode_id=chaincode_id,
            input=chaincode_pb2.ChaincodeInput(
                args=[function.encode(), *(_as_bytes(a) for a in args)]
            ),
        )
    )
    payload = proposal_pb2.ChaincodeProposalPayload(
        input=invocation.SerializeToString(), TransientMap=dict(transient or {})
    )
    if timestamp is None:
        timestamp = timestamp_pb2.Timestamp()
        timestamp.GetCurrentTime()
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION,
        channel_id=channel,
        tx_id=txid,
        timestamp=timestamp,
        epoch=0,
        extension=proposal_pb2.ChaincodeHeaderExtension(
            chaincode_id=chaincode_id
        ).SerializeToString(),
    )
    signature_header = common_pb2.SignatureHeader(creator=creator, nonce=nonce)
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=signature_header.SerializeToString(),
    )
    proposal_bytes = proposal_pb2.Proposal(
        header=header.SerializeToString(), payload=payload.SerializeToString()
    ).SerializeToString()
    return Proposal(
        txid=txid,
        channel=channel,
        chaincode=chaincode,
        proposal_bytes=proposal_bytes,
        signature=identity.sign(proposal_bytes),
        endorsing_orgs=tuple(endorsing_orgs or ()),
    )
