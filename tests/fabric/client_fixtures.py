"""Test material for the Gateway client: certificates made on the fly and a real
in-process Gateway gRPC server with scripted answers.

The server is a grpc.aio server on loopback running in its own thread and event
loop, so blocking and asyncio clients talk to it over a real socket, TLS and all.
It verifies every client signature it receives, like a peer would.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import (
    chaincode_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from google.protobuf import any_pb2
from google.rpc import status_pb2

from saga.adapters.fabric import crypto
from saga.adapters.fabric.identity import SigningIdentity

T = TypeVar("T")

PEER_HOST = "peer0.org1.example.com"


# -- certificates --------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class CertAuthority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> CertAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        dns_names: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if dns_names:
            names: list[x509.GeneralName] = []
            for n in dns_names:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    names.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_identity(msp_id: str = "Org1MSP", ca: CertAuthority | None = None) -> SigningIdentity:
    ca = ca or CertAuthority.create("ca.org1.example.com")
    cert, key = ca.issue("User1@org1.example.com", client=True)
    return SigningIdentity.from_pem(msp_id, cert, key)


def write_msp_dir(
    root: Path, ca: CertAuthority, user: str = "User1@org1.example.com"
) -> tuple[Path, bytes]:
    """An MSP folder in cryptogen's layout; returns (folder, certificate PEM)."""
    msp = root / "msp"
    for sub in ("signcerts", "keystore", "cacerts"):
        (msp / sub).mkdir(parents=True, exist_ok=True)
    cert, key = ca.issue(user, client=True)
    (msp / "signcerts" / f"{user}-cert.pem").write_bytes(cert)
    (msp / "keystore" / "priv_sk").write_bytes(key)
    (msp / "cacerts" / "ca.pem").write_bytes(ca.cert_pem)
    return msp, cert


# -- a scripted Gateway service -------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A gRPC error to answer with, ErrorDetails carried as Fabric's gateway does."""

    code: grpc.StatusCode
    message: str
    details: tuple[tuple[str, str, str], ...] = ()  # (address, msp_id, message)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for address, msp_id, message in self.details:
            packed = any_pb2.Any()
            packed.Pack(gateway_pb2.ErrorDetail(address=address, msp_id=msp_id, message=message))
            status.details.append(packed)
        return (("grpc-status-details-bin", status.SerializeToString()),)


def _creator_cert(creator: bytes) -> bytes:
    return bytes(identities_pb2.SerializedIdentity.FromString(creator).id_bytes)


def _parse_proposal(signed: Any) -> tuple[Any, Any, Any, list[bytes]]:
    proposal = proposal_pb2.Proposal.FromString(signed.proposal_bytes)
    header = common_pb2.Header.FromString(proposal.header)
    channel_header = common_pb2.ChannelHeader.FromString(header.channel_header)
    signature_header = common_pb2.SignatureHeader.FromString(header.signature_header)
    payload = proposal_pb2.ChaincodeProposalPayload.FromString(proposal.payload)
    spec = chaincode_pb2.ChaincodeInvocationSpec.FromString(payload.input)
    return header, channel_header, signature_header, list(spec.chaincode_spec.input.args)


@dataclass
class ScriptedGateway(gateway_pb2_grpc.GatewayServicer):  # type: ignore[misc]
    """Answers Gateway calls from a script; records what it was sent.

    ``failures`` maps an RPC name to the Failure to answer with. Submit commits
    the transaction into block ``next_block`` with ``commit_code`` unless
    ``auto_commit`` is off; CommitStatus waits for the commit, as Fabric's does.
    """

    failures: dict[str, Failure] = field(default_factory=dict)
    result: bytes = b"chaincode-result"
    commit_code: int = transaction_pb2.VALID
    auto_commit: bool = True
    next_block: int = 5
    evaluate_status: int = 200
    canned_envelope: Any = None  # set: Endorse answers with it, whatever was proposed
    commits: dict[str, tuple[int, int]] = field(default_factory=dict)
    submitted: list[bytes] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    peers: set[str] = field(default_factory=set)
    _committed: dict[str, asyncio.Event] = field(default_factory=dict)

    def _event(self, txid: str) -> asyncio.Event:
        return self._committed.setdefault(txid, asyncio.Event())

    def commit(
        self, txid: str, code: int = transaction_pb2.VALID, block: int | None = None
    ) -> None:
        """Record a commit; must run on the server's loop (use GatewayServer.commit)."""
        if txid not in self.commits:
            self.commits[txid] = (code, self.next_block if block is None else block)
        self._event(txid).set()

    async def _start(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.calls.append((name, request))
        self.peers.add(context.peer())
        failure = self.failures.get(name)
        if failure is not None:
            await context.abort(
                failure.code, failure.message, trailing_metadata=failure.trailing_metadata()
            )

    async def _check_proposal(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        signed = request.proposed_transaction
        header, channel_header, signature_header, args = _parse_proposal(signed)
        cert = _creator_cert(signature_header.creator)
        if not crypto.verify(cert, signed.signature, signed.proposal_bytes):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad proposal signature")
        if crypto.compute_txid(signature_header.nonce, signature_header.creator) != (
            channel_header.tx_id
        ) or (request.transaction_id != channel_header.tx_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "txid mismatch")
        return header, args

    async def Endorse(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._start("Endorse", request, context)
        header, _ = await self._check_proposal(request, context)
        if self.canned_envelope is not None:
            return gateway_pb2.EndorseResponse(prepared_transaction=self.canned_envelope)
        proposal = proposal_pb2.Proposal.FromString(request.proposed_transaction.proposal_bytes)
        action = proposal_pb2.ChaincodeAction(
            response=proposal_response_pb2.Response(status=200, payload=self.result)
        )
        response_payload = proposal_response_pb2.ProposalResponsePayload(
            proposal_hash=hashlib.sha256(proposal.header + proposal.payload).digest(),
            extension=action.SerializeToString(),
        )
        action_payload = transaction_pb2.ChaincodeActionPayload(
            chaincode_proposal_payload=proposal.payload,
            action=transaction_pb2.ChaincodeEndorsedAction(
                proposal_response_payload=response_payload.SerializeToString()
            ),
        )
        tx = transaction_pb2.Transaction(
            actions=[
                transaction_pb2.TransactionAction(
                    header=header.signature_header, payload=action_payload.SerializeToString()
                )
            ]
        )
        payload = common_pb2.Payload(header=header, data=tx.SerializeToString())
        # Fabric's gateway returns the envelope unsigned: the client signs it.
        return gateway_pb2.EndorseResponse(
            prepared_transaction=common_pb2.Envelope(payload=payload.SerializeToString())
        )

    async def Submit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._start("Submit", request, context)
        envelope = request.prepared_transaction
        payload = common_pb2.Payload.FromString(envelope.payload)
        signature_header = common_pb2.SignatureHeader.FromString(payload.header.signature_header)
        channel_header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        cert = _creator_cert(signature_header.creator)
        if not crypto.verify(cert, envelope.signature, envelope.payload):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad envelope signature")
        if channel_header.tx_id != request.transaction_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "txid mismatch")
        self.submitted.append(envelope.SerializeToString())
        if self.auto_commit:
            # Like Fabric: a txid seen before stays with its first code.
            self.commit(request.transaction_id, self.commit_code)
        return gateway_pb2.SubmitResponse()

    async def CommitStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._start("CommitStatus", request, context)
        inner = gateway_pb2.CommitStatusRequest.FromString(request.request)
        cert = _creator_cert(inner.identity)
        if not crypto.verify(cert, request.signature, request.request):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "bad request signature")
        await self._event(inner.transaction_id).wait()
        code, block = self.commits[inner.transaction_id]
        return gateway_pb2.CommitStatusResponse(result=code, block_number=block)

    async def Evaluate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._start("Evaluate", request, context)
        _, args = await self._check_proposal(request, context)
        return gateway_pb2.EvaluateResponse(
            result=proposal_response_pb2.Response(
                status=self.evaluate_status,
                message="" if self.evaluate_status < 400 else "chaincode said no",
                payload=b"|".join(args),
            )
        )


@dataclass(frozen=True)
class ServerTls:
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None = None  # set: mutual TLS required


class GatewayServer:
    """Runs a servicer on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, servicer: ScriptedGateway, tls: ServerTls | None = None) -> None:
        self.servicer = servicer
        self.tls = tls
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        gateway_pb2_grpc.add_GatewayServicer_to_server(self.servicer, self._server)
        if self.tls is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials(
                [(self.tls.key_pem, self.tls.cert_pem)],
                root_certificates=self.tls.client_ca_pem,
                require_client_auth=self.tls.client_ca_pem is not None,
            )
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        await self._server.start()

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def commit(
        self, txid: str, code: int = transaction_pb2.VALID, block: int | None = None
    ) -> None:
        async def _commit() -> None:
            self.servicer.commit(txid, code, block)

        self.run(_commit())

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@dataclass
class TlsSet:
    """A server TLS CA and a client TLS CA, with certificates for both ends."""

    server_ca: CertAuthority
    client_ca: CertAuthority
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes

    @classmethod
    def create(cls) -> TlsSet:
        server_ca = CertAuthority.create("tlsca.org1.example.com")
        client_ca = CertAuthority.create("tlsca.clients.example.com")
        server_cert, server_key = server_ca.issue(
            PEER_HOST, dns_names=(PEER_HOST, "localhost", "127.0.0.1"), server=True
        )
        client_cert, client_key = client_ca.issue("User1@org1.example.com", client=True)
        return cls(server_ca, client_ca, server_cert, server_key, client_cert, client_key)
