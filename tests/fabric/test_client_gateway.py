"""The blocking Gateway client against a real in-process Gateway gRPC server."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fabric_protos.gateway import gateway_pb2
from fabric_protos.peer import transaction_pb2

from saga.adapters.fabric import (
    CommitError,
    CommitStatusError,
    Deadlines,
    EndorseError,
    ErrorDetail,
    EvaluateError,
    GatewayClient,
    GatewayEndpoint,
    PreparedTransaction,
    Proposal,
    SigningIdentity,
    SubmitError,
    load_connection_profile,
)
from saga.ports.ledger import CommitResult, EndorseFailed, Ledger, StatusUnknown, SubmitFailed
from tests.fabric.client_fixtures import (
    PEER_HOST,
    Failure,
    GatewayServer,
    ScriptedGateway,
    ServerTls,
    TlsSet,
    new_identity,
)


@pytest.fixture(scope="module")
def identity() -> SigningIdentity:
    return new_identity("Org1MSP")


@pytest.fixture(scope="module")
def tls() -> TlsSet:
    return TlsSet.create()


@pytest.fixture
def server() -> Iterator[GatewayServer]:
    with GatewayServer(ScriptedGateway()) as running:
        yield running


@pytest.fixture
def client(server: GatewayServer, identity: SigningIdentity) -> Iterator[GatewayClient]:
    with GatewayClient.connect(GatewayEndpoint(server.address), identity) as gateway:
        yield gateway


def test_prepare_submit_and_commit_status_carry_one_txid(
    server: GatewayServer, client: GatewayClient
) -> None:
    proposal = client.new_proposal(
        "mychannel", "sagas", "Record", ["saga-1", "step"], endorsing_orgs=["Org1MSP"]
    )
    prepared = client.endorse(proposal)
    submitted = client.submit(prepared)
    result = client.commit_status("mychannel", prepared.txid)

    assert proposal.txid == prepared.txid == submitted.txid == result.txid
    assert prepared.channel == submitted.channel == "mychannel"
    assert prepared.result() == b"chaincode-result"
    assert result == CommitResult(prepared.txid, 0, "VALID", 5)
    assert result.valid
    endorse_request = server.servicer.calls[0][1]
    assert endorse_request.transaction_id == proposal.txid
    assert list(endorse_request.endorsing_organizations) == ["Org1MSP"]
    assert server.servicer.submitted == [prepared.to_bytes()]


def test_client_is_a_ledger_port(client: GatewayClient) -> None:
    ledger: Ledger = client
    prepared = ledger.prepare("mychannel", "sagas", "Record", ["k"])
    assert ledger.submit(prepared.to_bytes()).txid == prepared.txid
    assert ledger.commit_status("mychannel", prepared.txid).valid
    assert ledger.evaluate("mychannel", "sagas", "Get", ["k", b"\x01"]) == b"Get|k|\x01"


def test_stored_envelope_is_resubmitted_unchanged_by_a_new_client(
    server: GatewayServer, identity: SigningIdentity
) -> None:
    endpoint = GatewayEndpoint(server.address)
    with GatewayClient.connect(endpoint, identity) as first:
        stored = first.prepare("mychannel", "sagas", "Record", ["k"]).to_bytes()
    # A crash here: the row in PostgreSQL holds only these bytes.
    with GatewayClient.connect(endpoint, identity) as second:
        prepared = PreparedTransaction.from_bytes(stored)
        second.submit(stored)
        second.submit(prepared)
        result = second.commit_status(prepared.channel, prepared.txid)

    assert server.servicer.submitted == [stored, stored]
    assert [c[1].transaction_id for c in server.servicer.calls if c[0] == "Submit"] == [
        prepared.txid,
        prepared.txid,
    ]
    assert result.valid


def test_invalid_commit_is_a_result_and_a_commit_error_not_status_unknown(
    server: GatewayServer, client: GatewayClient
) -> None:
    server.servicer.commit_code = transaction_pb2.MVCC_READ_CONFLICT
    prepared = client.prepare("mychannel", "sagas", "Record", ["k"])
    client.submit(prepared)
    result = client.commit_status("mychannel", prepared.txid)
    assert (result.code, result.code_name, result.valid) == (11, "MVCC_READ_CONFLICT", False)

    with pytest.raises(CommitError) as caught:
        client.submit_transaction("mychannel", "sagas", "Record", ["k2"])
    error = caught.value
    assert error.code == 11
    assert error.block_number == 5
    assert error.txid is not None and len(error.txid) == 64
    assert not isinstance(error, StatusUnknown)
    assert "MVCC_READ_CONFLICT" in str(error)


def test_endorse_failure_carries_txid_code_and_gateway_error_details(
    server: GatewayServer, client: GatewayClient
) -> None:
    server.servicer.failures["Endorse"] = Failure(
        grpc.StatusCode.ABORTED,
        "failed to endorse transaction, see attached details for more info",
        (
            ("peer0.org1.example.com:7051", "Org1MSP", "chaincode response 500, already recorded"),
            ("peer0.org2.example.com:9051", "Org2MSP", "duplicate transaction found"),
        ),
    )
    proposal = client.new_proposal("mychannel", "sagas", "Record", ["k"])
    with pytest.raises(EndorseError) as caught:
        client.endorse(proposal)

    error = caught.value
    assert isinstance(error, EndorseFailed)
    assert error.txid == proposal.txid
    assert error.code is grpc.StatusCode.ABORTED
    assert error.status_message.startswith("failed to endorse transaction")
    assert error.details == (
        ErrorDetail(
            "peer0.org1.example.com:7051", "Org1MSP", "chaincode response 500, already recorded"
        ),
        ErrorDetail("peer0.org2.example.com:9051", "Org2MSP", "duplicate transaction found"),
    )
    assert not error.retryable
    assert "already recorded" in str(error)


def test_submit_failure_is_outcome_unknown_and_retryable(
    server: GatewayServer, client: GatewayClient
) -> None:
    prepared = client.prepare("mychannel", "sagas", "Record", ["k"])
    server.servicer.failures["Submit"] = Failure(
        grpc.StatusCode.UNAVAILABLE,
        "failed to send transaction to orderer",
        (("orderer.example.com:7050", "OrdererMSP", "connection refused"),),
    )
    with pytest.raises(SubmitError) as caught:
        client.submit(prepared)
    error = caught.value
    assert isinstance(error, SubmitFailed)
    assert (error.txid, error.code, error.retryable) == (
        prepared.txid,
        grpc.StatusCode.UNAVAILABLE,
        True,
    )
    assert error.details[0].msp_id == "OrdererMSP"


def test_commit_status_deadline_is_status_unknown_not_commit_error(
    server: GatewayServer, identity: SigningIdentity
) -> None:
    server.servicer.auto_commit = False
    deadlines = Deadlines(commit_status=0.3)
    with GatewayClient.connect(GatewayEndpoint(server.address), identity, deadlines=deadlines) as c:
        prepared = c.prepare("mychannel", "sagas", "Record", ["k"])
        c.submit(prepared)
        started = time.monotonic()
        with pytest.raises(CommitStatusError) as caught:
            c.commit_status("mychannel", prepared.txid)
        elapsed = time.monotonic() - started
        error = caught.value
        assert isinstance(error, StatusUnknown)
        assert not isinstance(error, CommitError)
        assert (error.txid, error.code, error.retryable) == (
            prepared.txid,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            True,
        )
        assert 0.25 <= elapsed < 5

        # Once the block is cut, the same question gets its answer.
        server.commit(prepared.txid, transaction_pb2.VALID, block=9)
        assert c.commit_status("mychannel", prepared.txid, timeout=5).block_number == 9


def test_commit_status_with_no_peer_listening_is_status_unknown(identity: SigningIdentity) -> None:
    with GatewayServer(ScriptedGateway()) as stopped:
        address = stopped.address
    with (
        GatewayClient.connect(GatewayEndpoint(address), identity) as c,
        pytest.raises(CommitStatusError) as caught,
    ):
        c.commit_status("mychannel", "ab" * 32, timeout=3)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert caught.value.retryable


def test_commit_status_request_is_signed_by_the_client_identity(
    server: GatewayServer, client: GatewayClient, identity: SigningIdentity
) -> None:
    server.commit("cd" * 32, transaction_pb2.DUPLICATE_TXID, block=3)
    result = client.commit_status("mychannel", "cd" * 32)
    assert (result.code_name, result.block_number) == ("DUPLICATE_TXID", 3)
    signed = next(req for name, req in server.servicer.calls if name == "CommitStatus")
    inner = gateway_pb2.CommitStatusRequest.FromString(signed.request)
    assert (inner.transaction_id, inner.channel_id) == ("cd" * 32, "mychannel")
    assert inner.identity == identity.creator


def test_evaluate_errors(server: GatewayServer, client: GatewayClient) -> None:
    server.servicer.evaluate_status = 500
    with pytest.raises(EvaluateError, match="chaincode response 500"):
        client.evaluate("mychannel", "sagas", "Get", ["k"])
    server.servicer.failures["Evaluate"] = Failure(grpc.StatusCode.NOT_FOUND, "no such chaincode")
    with pytest.raises(EvaluateError) as caught:
        client.evaluate("mychannel", "nope", "Get")
    assert caught.value.code is grpc.StatusCode.NOT_FOUND


def test_one_grpc_connection_serves_every_call(
    server: GatewayServer, client: GatewayClient
) -> None:
    for i in range(5):
        client.submit_transaction("mychannel", "sagas", "Record", [str(i)])
        client.evaluate("mychannel", "sagas", "Get", [str(i)])
    assert len(server.servicer.calls) == 20
    assert len(server.servicer.peers) == 1


# -- TLS ----------------------------------------------------------------------


def test_tls_with_the_right_ca_and_name_override(tls: TlsSet, identity: SigningIdentity) -> None:
    servicer = ScriptedGateway()
    with GatewayServer(servicer, ServerTls(tls.server_cert, tls.server_key)) as server:
        endpoint = GatewayEndpoint(
            f"127.0.0.1:{server.port}",
            tls_root_certs=tls.server_ca.cert_pem,
            server_name_override=PEER_HOST,
        )
        with GatewayClient.connect(endpoint, identity) as c:
            assert c.evaluate("mychannel", "sagas", "Get", ["k"]) == b"Get|k"
            c.submit_transaction("mychannel", "sagas", "Record", ["k"])


def test_tls_with_a_wrong_ca_is_refused(tls: TlsSet, identity: SigningIdentity) -> None:
    other = TlsSet.create()
    with GatewayServer(ScriptedGateway(), ServerTls(tls.server_cert, tls.server_key)) as server:
        endpoint = GatewayEndpoint(
            server.address, tls_root_certs=other.server_ca.cert_pem, server_name_override=PEER_HOST
        )
        with GatewayClient.connect(endpoint, identity) as c:
            with pytest.raises(EvaluateError) as caught:
                c.evaluate("mychannel", "sagas", "Get")
            with pytest.raises(CommitStatusError) as status_caught:
                c.commit_status("mychannel", "ab" * 32, timeout=5)
        assert server.servicer.calls == []
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert status_caught.value.code is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_trusted_ca(
    tls: TlsSet, identity: SigningIdentity
) -> None:
    server_tls = ServerTls(tls.server_cert, tls.server_key, client_ca_pem=tls.client_ca.cert_pem)
    with GatewayServer(ScriptedGateway(), server_tls) as server:
        base = GatewayEndpoint(
            server.address, tls_root_certs=tls.server_ca.cert_pem, server_name_override=PEER_HOST
        )
        with GatewayClient.connect(
            base.with_client_tls(tls.client_cert, tls.client_key), identity
        ) as c:
            assert c.evaluate("mychannel", "sagas", "Get", ["k"]) == b"Get|k"

        with (
            GatewayClient.connect(base, identity) as anonymous,
            pytest.raises(EvaluateError) as no_cert,
        ):
            anonymous.evaluate("mychannel", "sagas", "Get")
        stranger_cert, stranger_key = TlsSet.create().client_ca.issue("mallory", client=True)
        with (
            GatewayClient.connect(base.with_client_tls(stranger_cert, stranger_key), identity) as s,
            pytest.raises(EvaluateError) as untrusted,
        ):
            s.evaluate("mychannel", "sagas", "Get")
        assert len(server.servicer.calls) == 1
    assert no_cert.value.code is grpc.StatusCode.UNAVAILABLE
    assert untrusted.value.code is grpc.StatusCode.UNAVAILABLE


def test_connects_from_a_connection_profile(
    tmp_path: Path, tls: TlsSet, identity: SigningIdentity
) -> None:
    with GatewayServer(ScriptedGateway(), ServerTls(tls.server_cert, tls.server_key)) as server:
        (tmp_path / "tlsca").mkdir()
        (tmp_path / "tlsca" / "ca.pem").write_bytes(tls.server_ca.cert_pem)
        profile = {
            "name": "devnet-org1",
            "client": {"organization": "Org1"},
            "organizations": {"Org1": {"mspid": "Org1MSP", "peers": [PEER_HOST]}},
            "peers": {
                PEER_HOST: {
                    "url": f"grpcs://127.0.0.1:{server.port}",
                    "tlsCACerts": {"path": "tlsca/ca.pem"},
                    "grpcOptions": {"ssl-target-name-override": PEER_HOST},
                }
            },
        }
        path = tmp_path / "connection-org1.json"
        path.write_text(json.dumps(profile))
        loaded = load_connection_profile(path)
        assert loaded.msp_id == identity.msp_id
        with GatewayClient.connect(loaded.endpoint(), identity) as c:
            assert c.evaluate("mychannel", "sagas", "Get", ["p"]) == b"Get|p"


def test_an_envelope_for_another_txid_is_refused_before_it_is_stored(
    server: GatewayServer, client: GatewayClient, identity: SigningIdentity
) -> None:
    stranger = client.new_proposal("mychannel", "sagas", "Record", ["other"])
    other_envelope = server.run(_endorse_on_server(server, stranger))
    server.servicer.canned_envelope = other_envelope
    proposal = client.new_proposal("mychannel", "sagas", "Record", ["mine"])
    with pytest.raises(EndorseError, match="instead") as caught:
        client.endorse(proposal)
    assert caught.value.txid == proposal.txid


async def _endorse_on_server(server: GatewayServer, proposal: Proposal) -> object:
    request = gateway_pb2.EndorseRequest(
        transaction_id=proposal.txid,
        channel_id=proposal.channel,
        proposed_transaction=proposal.signed_proposal(),
    )

    class _Context:
        def peer(self) -> str:
            return "test"

        async def abort(self, *args: object, **kwargs: object) -> None:
            raise AssertionError(args)

    response = await server.servicer.Endorse(request, _Context())
    return response.prepared_transaction


def test_errors_survive_pickling_with_their_fields() -> None:
    endorse = EndorseError(
        txid="t1",
        code=grpc.StatusCode.ABORTED,
        status_message="failed to endorse",
        details=(ErrorDetail("peer0:7051", "Org1MSP", "already recorded"),),
    )
    commit = CommitError(CommitResult("t2", 11, "MVCC_READ_CONFLICT", 7))
    for error in (endorse, commit, StatusUnknown("gone", txid="t3", retryable=True)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert (copy.txid, copy.retryable) == (error.txid, error.retryable)
    assert pickle.loads(pickle.dumps(endorse)).details == endorse.details
    assert pickle.loads(pickle.dumps(commit)).result == commit.result
