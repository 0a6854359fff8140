"""The gateway's errors in the shapes a real Fabric 2.5.16 peer gives (FABRIC-FACTS.md, "A real
network on these machines", and fabric's internal/pkg/gateway): code, top-level message, and the
ErrorDetail of each peer that failed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from saga_devnet.chaincode_launcher import chaincode_running
from saga_devnet.protos import gateway_pb2, transaction_pb2
from saga_devnet.rawclient import RawGateway, error_details
from tests.support.ports import free_port

NO_COMBINATION = "no combination of peers can be derived which satisfy the endorsement policy"
CC_NAME = "sagafacts"
CC_ID = "sagafacts_1.0:devnet"


def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _reset(devnet):
    devnet.reset_faults()
    yield
    devnet.reset_faults()


def _on_channel(devnet, channel: str) -> RawGateway:
    gw = devnet.client(1)
    gw.channel = channel
    return gw


# -- unknown chaincode and channel -------------------------------------------------------------


def test_endorse_of_an_unknown_chaincode_is_failed_precondition(devnet):
    gw = devnet.client(1)
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(gw.proposal("nosuchcc", "put", key(), "v"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.value.details() == (
        f"{NO_COMBINATION}: No metadata was found for chaincode nosuchcc in channel mychannel"
    )
    # Naming the orgs: the registry has no peer of theirs with the chaincode.
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(gw.proposal("nosuchcc", "put", key(), "v"), orgs=("Org1MSP",))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert exc.value.details() == "failed to find any endorsing peers for org(s): Org1MSP"


def test_evaluate_of_an_unknown_chaincode_is_failed_precondition(devnet):
    with pytest.raises(grpc.RpcError) as exc:
        devnet.client(1).evaluate("nosuchcc", "get", key())
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.value.details() == (
        "no peers available to evaluate chaincode nosuchcc in channel mychannel"
    )


def test_unknown_channel_codes_per_call(devnet):
    gw = _on_channel(devnet, "nochannel")
    no_config = (
        "failed to get config for channel [nochannel]: could not get last config for channel "
        "nochannel"
    )
    with pytest.raises(grpc.RpcError) as evaluate:
        gw.evaluate("devkv", "get", key())
    assert (evaluate.value.code(), evaluate.value.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        no_config,
    )
    p = gw.proposal("devkv", "put", key(), "v")
    with pytest.raises(grpc.RpcError) as endorse:
        gw.endorse(p)
    assert (endorse.value.code(), endorse.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"{NO_COMBINATION}: No metadata was found for chaincode devkv in channel nochannel",
    )
    with pytest.raises(grpc.RpcError) as status:
        gw.commit_status(p.txid, timeout=5)
    assert (status.value.code(), status.value.details()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "Failed to get policy manager for channel [nochannel]",
    )
    # Submit: an envelope endorsed on the real channel, submitted naming another.
    ok = devnet.client(1)
    q = ok.proposal("devkv", "put", key(), "v")
    env = ok.endorse(q)
    with pytest.raises(grpc.RpcError) as submit:
        gw.submit(q.txid, env, timeout=5)
    assert (submit.value.code(), submit.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        no_config,
    )


def test_commit_status_with_a_bad_signature_fails_the_readers_policy(devnet):
    gw = devnet.client(1)
    raw = gateway_pb2.CommitStatusRequest(
        transaction_id="ab" * 32, channel_id="mychannel", identity=gw.creator
    ).SerializeToString()
    with pytest.raises(grpc.RpcError) as exc:
        gw.stub.CommitStatus(
            gateway_pb2.SignedCommitStatusRequest(request=raw, signature=b"\x30\x00"), timeout=5
        )
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "[/Channel/Application/Readers]" in exc.value.details()
    assert "0 sub-policies were satisfied" in exc.value.details()


def test_tampered_envelope_signature_is_forbidden_by_the_writers_policy(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    env = gw.endorse(p)
    env.signature = env.signature[:-1] + bytes([env.signature[-1] ^ 1])
    with pytest.raises(grpc.RpcError) as exc:
        gw.submit(p.txid, env)
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert exc.value.details() == (
        "received unsuccessful response from orderer: status=FORBIDDEN, info=implicit policy "
        "evaluation failed - 0 sub-policies were satisfied, but this policy requires 1 of the "
        "'Writers' sub-policies to be satisfied: permission denied"
    )


def test_tampered_proposal_signature_is_the_endorsers_generic_access_denied(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    p.signed.signature = p.signed.signature[:-1] + bytes([p.signed.signature[-1] ^ 1])
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(p)
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert exc.value.details() == (
        "failed to endorse transaction, see attached details for more info"
    )
    (detail,) = error_details(exc.value)
    assert (detail.msp_id, detail.message) == (
        "Org1MSP",
        "error validating proposal: access denied: channel [mychannel] creator org [Org1MSP]",
    )


def test_orderer_down_fails_submit_unavailable_naming_each_orderer(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    env = gw.endorse(p)
    devnet.set_faults(orderer_down=True)
    with pytest.raises(grpc.RpcError) as exc:
        gw.submit(p.txid, env, timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert exc.value.details() == "no orderers could successfully process transaction"
    (detail,) = error_details(exc.value)
    endpoint = f"127.0.0.1:{devnet.config.get('orderer', {}).get('port', 7050)}"
    assert (detail.msp_id, detail.address) == ("OrdererMSP", endpoint)
    assert detail.message == (
        'rpc error: code = Unavailable desc = connection error: desc = "transport: Error while '
        f'dialing: dial tcp {endpoint}: connect: connection refused"'
    )
    # Nothing was ordered: the same envelope goes through once the orderers are back.
    devnet.reset_faults()
    gw.submit(p.txid, env)
    assert gw.commit_status(p.txid)[0] == transaction_pb2.VALID


# -- another org's peer down -------------------------------------------------------------------


def _wait_refused(gw: RawGateway, timeout: float = 5.0) -> grpc.RpcError:
    deadline = time.monotonic() + timeout
    while True:
        try:
            gw.evaluate("devkv", "keys", timeout=2)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                return exc
        assert time.monotonic() < deadline, "the down org's gateway still answers"
        time.sleep(0.1)


def test_other_org_down_aborts_then_fails_precondition_once_gossip_forgets_it(devnet):
    gw = devnet.client(1)
    devnet.set_faults(org_down=["Org2MSP"], org_down_expiry=60)
    # Still in gossip's view: the gateway tries the peer and collects a refusal.
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(gw.proposal("devkv", "put", key(), "v"))
    assert time.monotonic() - started < 2
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert exc.value.details() == (
        "failed to collect enough transaction endorsements, see attached details for more info"
    )
    (detail,) = error_details(exc.value)
    assert detail.msp_id == "Org2MSP"
    assert detail.message.startswith(
        'rpc error: code = Unavailable desc = connection error: desc = "transport: Error while '
        "dialing: dial tcp 127.0.0.1:"
    )
    assert detail.message.endswith('connect: connection refused"')
    with pytest.raises(grpc.RpcError) as evaluate:
        gw.evaluate("devkv", "keys", orgs=("Org2MSP",))
    assert evaluate.value.code() == grpc.StatusCode.UNAVAILABLE
    assert evaluate.value.details().startswith("failed to evaluate transaction")
    # The down org's own gateway port refuses connections, as a stopped peer's does.
    assert _wait_refused(devnet.client(2)).code() == grpc.StatusCode.UNAVAILABLE

    # Expired from gossip: no plan can be made without it.
    devnet.set_faults(org_down_expiry=0)
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(gw.proposal("devkv", "put", key(), "v"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.value.details() == (
        f"{NO_COMBINATION}: no peer combination can satisfy the endorsement policy"
    )
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(gw.proposal("devkv", "put", key(), "v"), orgs=("Org1MSP", "Org2MSP"))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert exc.value.details() == "failed to find any endorsing peers for org(s): Org2MSP"
    assert gw.evaluate("devkv", "keys").status == 200  # the local peer still evaluates

    devnet.reset_faults()
    assert gw.submit_transaction("devkv", "put", key(), "v")[1] == transaction_pb2.VALID
    deadline = time.monotonic() + 10
    while True:  # the org's gateway listens again
        try:
            devnet.client(2).evaluate("devkv", "keys", timeout=2)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


# -- chaincode process down --------------------------------------------------------------------


@pytest.fixture
def cc_net(devnet_factory, tmp_path) -> Iterator[tuple[object, object]]:
    address = f"127.0.0.1:{free_port()}"
    with chaincode_running(address, CC_ID, tmp_path / "chaincode.log") as proc:
        net = devnet_factory(
            chaincodes={
                CC_NAME: {"address": address, "package_id": CC_ID, "policy": "ANY Endorsement"}
            }
        )
        yield net, proc


def test_chaincode_down_fails_fast_like_a_peer_that_cannot_launch_it(cc_net):
    net, proc = cc_net
    gw = net.client(1)
    k = f"saga-{uuid.uuid4().hex[:8]}/pay/do"
    assert gw.submit_transaction(CC_NAME, "RecordPayment", k, "o", "1", "EUR")[1] == 0
    proc.kill()
    proc.wait()
    address = net.config["chaincodes"][CC_NAME]["address"]
    for _ in range(2):  # the first call may still find the old stream, then the dial fails
        p = gw.proposal(CC_NAME, "RecordPayment", f"{k}-2", "o", "1", "EUR")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as exc:
            gw.endorse(p)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert exc.value.details() == (
        "failed to endorse transaction, see attached details for more info"
    )
    (detail,) = error_details(exc.value)
    assert detail.msp_id == "Org1MSP"
    assert detail.message == (
        f"error in simulation: failed to execute transaction {p.txid}: could not launch "
        f"chaincode {CC_ID}: connection to {CC_ID} failed: error cannot create connection for "
        f"{CC_ID}: error creating grpc connection to {address}: failed to create new "
        'connection: connection error: desc = "transport: error while dialing: dial tcp '
        f'{address}: connect: connection refused"'
    )
    # Evaluate tries each org's peer in turn, then gives up with every peer's detail.
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        gw.evaluate(CC_NAME, "GetRecord", k)
    assert time.monotonic() - started < 1.0
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert exc.value.details() == (
        "failed to evaluate transaction, see attached details for more info"
    )
    assert [d.msp_id for d in error_details(exc.value)] == ["Org1MSP", "Org2MSP"]
    assert "could not launch chaincode" in error_details(exc.value)[0].message
