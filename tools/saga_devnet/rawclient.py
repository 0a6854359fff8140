"""A minimal Gateway client over the raw protos, for the devnet's own tests and for poking at
a running devnet. The product's client lives in saga.adapters.fabric; this one is deliberately
thin so that tests can also build malformed or tampered messages.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from saga.adapters.fabric import crypto
from saga_devnet.protos import (
    chaincode_pb2,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    identities_pb2,
    proposal_pb2,
)


@dataclass
class Proposal:
    txid: str
    signed: Any  # peer.SignedProposal
    channel: str


class RawGateway:
    def __init__(
        self,
        *,
        address: str,
        tls_root: bytes,
        server_name: str,
        msp_id: str,
        cert_pem: bytes,
        key: ec.EllipticCurvePrivateKey,
        channel: str = "mychannel",
        client_tls: tuple[bytes, bytes] | None = None,  # (key, cert) for mutual TLS
    ) -> None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls_root,
            private_key=client_tls[0] if client_tls else None,
            certificate_chain=client_tls[1] if client_tls else None,
        )
        self._chan = grpc.secure_channel(
            address, creds, options=[("grpc.ssl_target_name_override", server_name)]
        )
        self.stub = gateway_pb2_grpc.GatewayStub(self._chan)
        self.msp_id = msp_id
        self.key = key
        self.channel = channel
        self.creator = identities_pb2.SerializedIdentity(
            mspid=msp_id, id_bytes=cert_pem
        ).SerializeToString()

    @classmethod
    def for_user(
        cls,
        org_dir: Path,
        *,
        msp_id: str,
        port: int,
        user: str = "User1",
        channel: str = "mychannel",
        mutual_tls: bool = False,
    ) -> RawGateway:
        """Connect as a user of the org whose cryptogen folder is org_dir."""
        domain = org_dir.name
        udir = org_dir / "users" / f"{user}@{domain}"
        msp = udir / "msp"
        cert = next((msp / "signcerts").iterdir()).read_bytes()
        key = crypto.load_private_key(next((msp / "keystore").iterdir()).read_bytes())
        tls_root = (org_dir / "tlsca" / f"tlsca.{domain}-cert.pem").read_bytes()
        client_tls = None
        if mutual_tls:
            tls = udir / "tls"
            client_tls = ((tls / "client.key").read_bytes(), (tls / "client.crt").read_bytes())
        return cls(
            address=f"127.0.0.1:{port}",
            tls_root=tls_root,
            server_name=f"peer0.{domain}",
            msp_id=msp_id,
            cert_pem=cert,
            key=key,
            channel=channel,
            client_tls=client_tls,
        )

    def close(self) -> None:
        self._chan.close()

    # -- building ---------------------------------------------------------------------------

    def proposal(
        self, chaincode: str, fn: str, *args: str | bytes, nonce: bytes | None = None
    ) -> Proposal:
        nonce = nonce if nonce is not None else os.urandom(crypto.NONCE_SIZE)
        txid = crypto.compute_txid(nonce, self.creator)
        chdr = common_pb2.ChannelHeader(
            type=common_pb2.ENDORSER_TRANSACTION,
            channel_id=self.channel,
            tx_id=txid,
            extension=proposal_pb2.ChaincodeHeaderExtension(
                chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode)
            ).SerializeToString(),
        )
        now = time.time_ns()
        chdr.timestamp.seconds, chdr.timestamp.nanos = divmod(now, 1_000_000_000)
        shdr = common_pb2.SignatureHeader(creator=self.creator, nonce=nonce)
        raw_args = [fn.encode()] + [a.encode() if isinstance(a, str) else a for a in args]
        spec = chaincode_pb2.ChaincodeInvocationSpec(
            chaincode_spec=chaincode_pb2.ChaincodeSpec(
                type=chaincode_pb2.ChaincodeSpec.GOLANG,
                chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode),
                input=chaincode_pb2.ChaincodeInput(args=raw_args),
            )
        )
        prop = proposal_pb2.Proposal(
            header=common_pb2.Header(
                channel_header=chdr.SerializeToString(), signature_header=shdr.SerializeToString()
            ).SerializeToString(),
            payload=proposal_pb2.ChaincodeProposalPayload(
                input=spec.SerializeToString()
            ).SerializeToString(),
        )
        raw = prop.SerializeToString()
        signed = proposal_pb2.SignedProposal(
            proposal_bytes=raw, signature=crypto.sign(self.key, raw)
        )
        return Proposal(txid, signed, self.channel)

    def sign_envelope(self, envelope: Any) -> Any:
        envelope.signature = crypto.sign(self.key, envelope.payload)
        return envelope

    # -- calls ------------------------------------------------------------------------------

    def endorse(self, p: Proposal, orgs: tuple[str, ...] = (), timeout: float = 30) -> Any:
        resp = self.stub.Endorse(
            gateway_pb2.EndorseRequest(
                transaction_id=p.txid,
                channel_id=p.channel,
                proposed_transaction=p.signed,
                endorsing_organizations=list(orgs),
            ),
            timeout=timeout,
        )
        return self.sign_envelope(resp.prepared_transaction)

    def submit(self, txid: str, envelope: Any, timeout: float = 30) -> None:
        self.stub.Submit(
            gateway_pb2.SubmitRequest(
                transaction_id=txid, channel_id=self.channel, prepared_transaction=envelope
            ),
            timeout=timeout,
        )

    def commit_status(self, txid: str, timeout: float = 30) -> tuple[int, int]:
        req = gateway_pb2.CommitStatusRequest(
            transaction_id=txid, channel_id=self.channel, identity=self.creator
        ).SerializeToString()
        resp = self.stub.CommitStatus(
            gateway_pb2.SignedCommitStatusRequest(
                request=req, signature=crypto.sign(self.key, req)
            ),
            timeout=timeout,
        )
        return int(resp.result), int(resp.block_number)

    def evaluate(
        self,
        chaincode: str,
        fn: str,
        *args: str | bytes,
        orgs: tuple[str, ...] = (),
        timeout: float = 30,
    ) -> Any:
        p = self.proposal(chaincode, fn, *args)
        resp = self.stub.Evaluate(
            gateway_pb2.EvaluateRequest(
                transaction_id=p.txid,
                channel_id=p.channel,
                proposed_transaction=p.signed,
                target_organizations=list(orgs),
            ),
            timeout=timeout,
        )
        return resp.result

    def submit_transaction(self, chaincode: str, fn: str, *args: str) -> tuple[str, int, int]:
        """Endorse, submit and wait: (txid, validation code, block number)."""
        p = self.proposal(chaincode, fn, *args)
        env = self.endorse(p)
        self.submit(p.txid, env)
        code, block = self.commit_status(p.txid)
        return p.txid, code, block


def error_details(err: grpc.RpcError) -> list[Any]:
    """The gateway.ErrorDetail messages in a gRPC error's google.rpc.Status trailer."""
    from saga_devnet.protos import status_pb2

    out = []
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(value)
            for d in st.details:
                detail = gateway_pb2.ErrorDetail()
                d.Unpack(detail)
                out.append(detail)
    return out
