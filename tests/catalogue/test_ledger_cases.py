"""Catalogue: bad answers from the ledger side (gRPC bytes, validation codes, chaincode
refusals, TLS certificates, MSP identities). Each test names its case from issue 6.

Servers are real gRPC servers on loopback; the chain step cases run the real
orchestrator and executor on PostgreSQL. "Nothing partial" for a chain step means:
no ledger_attempts row for a transaction that never got a signed envelope, and
the saga's state moved only through the state machine (compensated, or completed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from sqlalchemy.engine import Engine

from saga.adapters.fabric import (
    CommitStatusError,
    EndorseError,
    GatewayClient,
    GatewayEndpoint,
    SigningIdentity,
)
from saga.app.chain import ChainSettings
from saga.core.ledger_faults import FaultKind
from saga.core.state import SagaStatus
from saga.ports.ledger import StatusUnknown
from tests.catalogue.ledger_support import (
    CodedGateway,
    attempt_count,
    attempt_rows,
    chain_orchestrator,
    connect,
    issue,
    raw_gateway,
)
from tests.fabric.client_fixtures import (
    PEER_HOST,
    CertAuthority,
    Failure,
    GatewayServer,
    ServerTls,
    TlsSet,
    new_identity,
)
from tests.support.outbox import drive_outbox

CHANNEL = "mychannel"
# The bytes of a field header promising more than follows: a truncated message.
TRUNCATED = b"\x0a\x20only-a-few-bytes"


@pytest.fixture(scope="module")
def identity() -> SigningIdentity:
    return new_identity("Org1MSP")


def _history(orch: Any, saga_id: str) -> list[tuple[str, dict[str, Any]]]:
    _, history = orch.get(saga_id)
    return [(h.kind, h.detail) for h in history]


# -- truncated protobuf -------------------------------------------------------------


def test_truncated_protobuf_for_a_prepared_transaction_is_an_endorse_error(
    identity: SigningIdentity,
) -> None:
    """Case: a truncated protobuf from the ledger (Endorse answers garbage bytes)."""
    with raw_gateway({"Endorse": TRUNCATED}) as address, connect(address, identity) as client:
        started = time.monotonic()
        with pytest.raises(EndorseError) as caught:
            client.prepare(CHANNEL, "sagafacts", "RecordFact", ["k"], timeout=5)
    assert time.monotonic() - started < 5
    assert caught.value.txid  # the error names the transaction it was preparing
    assert caught.value.code is grpc.StatusCode.INTERNAL
    assert "deserializ" in str(caught.value).lower()


def test_a_prepared_transaction_that_is_not_an_envelope_is_an_endorse_error(
    identity: SigningIdentity,
) -> None:
    """Case: a truncated protobuf from the ledger (a well-formed EndorseResponse whose
    prepared transaction is garbage): refused before anything could be stored."""
    garbage = gateway_pb2.EndorseResponse(
        prepared_transaction=common_pb2.Envelope(payload=TRUNCATED)
    ).SerializeToString()
    with (
        raw_gateway({"Endorse": garbage}) as address,
        connect(address, identity) as client,
        pytest.raises(EndorseError) as caught,
    ):
        client.prepare(CHANNEL, "sagafacts", "RecordFact", ["k"], timeout=5)
    assert "not a Fabric transaction envelope" in str(caught.value)
    assert caught.value.txid


def test_truncated_commit_status_is_status_unknown(identity: SigningIdentity) -> None:
    """Case: a truncated protobuf from the ledger (CommitStatus answers garbage bytes)."""
    with (
        raw_gateway({"CommitStatus": b"\x08"}) as address,
        connect(address, identity) as client,
        pytest.raises(CommitStatusError) as caught,
    ):
        client.commit_status(CHANNEL, "ab" * 32, timeout=5)
    # Unknown outcome, never "invalid": the executor only ever resubmits the same bytes.
    assert isinstance(caught.value, StatusUnknown)
    assert caught.value.txid == "ab" * 32
    assert caught.value.code is grpc.StatusCode.INTERNAL


def test_garbage_endorsement_fails_the_chain_step_and_stores_no_attempt(
    engine: Engine,
    identity: SigningIdentity,
) -> None:
    """Case: a truncated protobuf from the ledger, through a chain step: the step fails
    as an endorsement failure, the saga compensates, no ledger attempt is stored."""
    garbage = gateway_pb2.EndorseResponse(
        prepared_transaction=common_pb2.Envelope(payload=TRUNCATED)
    ).SerializeToString()
    with raw_gateway({"Endorse": garbage}) as address, connect(address, identity) as client:
        orch = chain_orchestrator(engine, lambda: client)
        saga_id = orch.enqueue("catalogue-fact", {"ref": "r-1"}).saga_id
        drive_outbox(orch, engine, timeout=30)
    record, _ = orch.get(saga_id)
    assert record.state.status is SagaStatus.COMPENSATED
    assert attempt_count(engine) == 0
    failures = [d for k, d in _history(orch, saga_id) if k == "step failed"]
    assert failures and all("EndorsementFailed" in str(d) for d in failures), failures


# -- unexpected validation codes ------------------------------------------------------


@pytest.mark.parametrize("code", [254, 255, 9999])
def test_unexpected_validation_code_is_final_invalid_then_verified(
    engine: Engine,
    identity: SigningIdentity,
    code: int,
) -> None:
    """Case: a ledger answer with an unexpected validation code. The txid is final and
    invalid; the executor reads the idempotency record (absent) and only then prepares
    a new transaction, which commits VALID."""
    servicer = CodedGateway(codes=[code])
    with GatewayServer(servicer) as server, connect(server.address, identity) as client:
        orch = chain_orchestrator(engine, lambda: client)
        saga_id = orch.enqueue("catalogue-fact", {"ref": f"r-{code}"}).saga_id
        drive_outbox(orch, engine, timeout=30)
    record, _ = orch.get(saga_id)
    assert record.state.status is SagaStatus.COMPLETED
    rows = attempt_rows(engine)
    assert [(r.state, r.code) for r in rows] == [("committed", code), ("committed", 0)]
    assert record.data["record"]["txid"] == rows[1].txid
    # The record was read between the invalid commit and the new endorsement.
    names = [name for name, _ in servicer.calls]
    first_submit = names.index("Submit")
    assert "Evaluate" in names[first_submit:]
    assert names.count("Endorse") == 2


def test_a_ledger_that_only_answers_unknown_codes_does_not_loop_for_ever(
    engine: Engine,
    identity: SigningIdentity,
) -> None:
    """Case: a ledger answer with an unexpected validation code, every time: the step
    gives up after its retry budget (no transaction can be VALID: not in doubt) and
    the saga compensates within bounded time."""
    servicer = CodedGateway(codes=[255] * 1000)
    with GatewayServer(servicer) as server, connect(server.address, identity) as client:
        orch = chain_orchestrator(engine, lambda: client)
        saga_id = orch.enqueue("catalogue-fact", {"ref": "r-loop"}).saga_id
        drive_outbox(orch, engine, timeout=60)
    record, _ = orch.get(saga_id)
    assert record.state.status is SagaStatus.COMPENSATED, record.state
    rows = attempt_rows(engine)
    assert rows and all((r.state, r.code) == ("committed", 255) for r in rows)
    assert len(rows) == ChainSettings().max_invalid_transactions
    failed = [d for k, d in _history(orch, saga_id) if k == "step failed"]
    assert failed and "TransactionsInvalid" in str(failed[0]) and "255" in str(failed[0])


# -- chaincode refusals ----------------------------------------------------------------


def _refusal(text: str) -> Failure:
    return Failure(
        grpc.StatusCode.ABORTED,
        "failed to endorse transaction, see attached details for more info",
        (("peer0.org1.example.com:7051", "Org1MSP", text),),
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("chaincode response 400, INVALID_ARGUMENT:ref must not be empty", "ChaincodeRefused"),
        ("chaincode response 500, something went wrong in the contract", "EndorsementFailed"),
    ],
    ids=["business-refusal", "unrecognised-refusal"],
)
def test_chaincode_error_response_fails_the_step_with_its_reason(
    engine: Engine,
    identity: SigningIdentity,
    text: str,
    error: str,
) -> None:
    """Case: a chaincode error response (not ALREADY_RECORDED): the step fails naming the
    chaincode's message, the saga compensates, nothing reaches the orderer or the table."""
    servicer = CodedGateway(failures={"Endorse": _refusal(text)})
    with GatewayServer(servicer) as server, connect(server.address, identity) as client:
        orch = chain_orchestrator(engine, lambda: client)
        saga_id = orch.enqueue("catalogue-fact", {"ref": "r-refused"}).saga_id
        drive_outbox(orch, engine, timeout=30)
    record, _ = orch.get(saga_id)
    assert record.state.status is SagaStatus.COMPENSATED
    assert attempt_count(engine) == 0
    assert servicer.submitted == []
    failed = [d for k, d in _history(orch, saga_id) if k == "step failed"]
    assert failed and error in str(failed[-1]) and text[-20:] in str(failed[-1])


# -- TLS certificates ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> TlsSet:
    return TlsSet.create()


def _tls_client(server: GatewayServer, roots: bytes, identity: SigningIdentity) -> GatewayClient:
    endpoint = GatewayEndpoint(server.address, tls_root_certs=roots, server_name_override=PEER_HOST)
    return GatewayClient.connect(endpoint, identity)


def test_an_expired_server_certificate_is_refused(tls: TlsSet, identity: SigningIdentity) -> None:
    """Case: expired TLS certificate (the gateway's): the handshake fails, no call is made."""
    cert, key = issue(tls.server_ca, PEER_HOST, dns_names=(PEER_HOST,), days=(-10, -1))
    with GatewayServer(CodedGateway(), ServerTls(cert, key)) as server:
        with _tls_client(server, tls.server_ca.cert_pem, identity) as client:
            started = time.monotonic()
            with pytest.raises(EndorseError) as caught:
                client.prepare(CHANNEL, "sagafacts", "RecordFact", ["k"], timeout=5)
        assert server.servicer.calls == []
    assert time.monotonic() - started < 10
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert "handshake" in str(caught.value).lower() or "ssl" in str(caught.value).lower()


def test_a_server_certificate_for_another_host_is_refused(
    tls: TlsSet, identity: SigningIdentity
) -> None:
    """Case: wrong TLS certificate (valid, trusted CA, but issued for another name)."""
    cert, key = issue(tls.server_ca, "orderer.example.com", dns_names=("orderer.example.com",))
    with GatewayServer(CodedGateway(), ServerTls(cert, key)) as server:
        with (
            _tls_client(server, tls.server_ca.cert_pem, identity) as client,
            pytest.raises(EndorseError) as caught,
        ):
            client.prepare(CHANNEL, "sagafacts", "RecordFact", ["k"], timeout=5)
        assert server.servicer.calls == []
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


def test_an_expired_client_certificate_is_refused_under_mutual_tls(
    tls: TlsSet, identity: SigningIdentity
) -> None:
    """Case: expired TLS certificate (the client's, with mutual TLS required)."""
    cert, key = issue(tls.client_ca, "User1@org1.example.com", days=(-10, -1))
    server_tls = ServerTls(tls.server_cert, tls.server_key, client_ca_pem=tls.client_ca.cert_pem)
    with GatewayServer(CodedGateway(), server_tls) as server:
        endpoint = GatewayEndpoint(
            server.address, tls_root_certs=tls.server_ca.cert_pem, server_name_override=PEER_HOST
        ).with_client_tls(cert, key)
        with (
            GatewayClient.connect(endpoint, identity) as client,
            pytest.raises(EndorseError) as caught,
        ):
            client.prepare(CHANNEL, "sagafacts", "RecordFact", ["k"], timeout=5)
        assert server.servicer.calls == []
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


# -- an identity from an MSP the channel does not know -------------------------------------


@pytest.fixture(scope="module")
def devnet_gateway(devnet: Any) -> Iterator[GatewayEndpoint]:
    from saga.adapters.fabric import load_connection_profile

    yield load_connection_profile(devnet.profile(1)).endpoint()


@pytest.mark.parametrize("msp_id", ["Org1MSP", "Org9MSP"], ids=["untrusted-ca", "unknown-msp"])
def test_an_identity_the_channel_does_not_know_is_refused_at_endorsement(
    devnet_gateway: GatewayEndpoint, msp_id: str
) -> None:
    """Case: a certificate from an MSP the channel does not know (signed by a CA the devnet
    does not trust, or claiming an MSP id the channel lacks): endorsement is refused and
    nothing is ordered. As a real Fabric 2.5 peer does, the answer hides why ("access
    denied ... creator org unknown"; the reason is in the peer's log only), and the
    product reads it as a misconfiguration of its identity settings."""
    stranger = new_identity(msp_id, CertAuthority.create("ca.rogue.example.com"))
    with (
        GatewayClient.connect(devnet_gateway, stranger) as client,
        pytest.raises(EndorseError) as caught,
    ):
        client.prepare(CHANNEL, "devkv", "put", ["k", "v"], timeout=10)
    _assert_identity_refused(caught.value)


def _assert_identity_refused(error: EndorseError) -> None:
    assert "access denied" in str(error) and "creator org unknown" in str(error)
    assert error.fault.kind is FaultKind.MISCONFIGURED and not error.retryable
    assert "SAGA_FABRIC_MSP_ID" in error.fault.meaning


def test_an_expired_identity_is_refused_at_endorsement(devnet: Any) -> None:
    """Case: expired certificate of the signing identity (issued by the org's real CA):
    refused like an unknown identity, the expiry named in the peer's log only."""
    from saga.adapters.fabric import load_connection_profile
    from saga.adapters.fabric.identity import SigningIdentity as Identity

    ca_dir = devnet.org_dir(1) / "ca"
    ca_cert = next(p for p in ca_dir.iterdir() if p.name.endswith("-cert.pem"))
    ca_key = ca_dir / "priv_sk"
    from cryptography import x509

    from saga.adapters.fabric import crypto

    ca = CertAuthority(
        "ca.org1",
        crypto.load_private_key(ca_key.read_bytes()),  # type: ignore[arg-type]
        x509.load_pem_x509_certificate(ca_cert.read_bytes()),
    )
    cert, key = issue(ca, "User9@org1.example.com", days=(-10, -1))
    expired = Identity.from_pem("Org1MSP", cert, key)
    endpoint = load_connection_profile(devnet.profile(1)).endpoint()
    with GatewayClient.connect(endpoint, expired) as client, pytest.raises(EndorseError) as caught:
        client.prepare(CHANNEL, "devkv", "put", ["k", "v"], timeout=10)
    _assert_identity_refused(caught.value)
