"""Endorse / submit / commit status against a running devnet, over gRPC and TLS."""

from __future__ import annotations

import hashlib
import threading
import uuid

import grpc
import pytest

from saga.adapters.fabric import crypto
from saga_devnet.blocks import header_hash
from saga_devnet.protos import common_pb2, ledger_pb2, transaction_pb2
from saga_devnet.rawclient import error_details
from saga_devnet.txparse import parse_envelope

VALID = transaction_pb2.VALID
MVCC = transaction_pb2.MVCC_READ_CONFLICT


def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def test_round_trip_and_txid_recorded(devnet):
    gw = devnet.client(1)
    k = key()
    p = gw.proposal("devkv", "create", k, "v1")
    env = gw.endorse(p)
    # The prepared envelope carries the proposal's header unchanged and both orgs' endorsements.
    tx = parse_envelope(env.SerializeToString())
    assert tx.txid == p.txid
    assert {e.endorser for e in tx.endorsements} and len(tx.endorsements) == 2
    gw.submit(p.txid, env)
    code, block = gw.commit_status(p.txid)
    assert (code, block >= 1) == (VALID, True)
    assert gw.evaluate("devkv", "get", k).payload == b"v1"
    # Org2's gateway sees the same ledger.
    assert devnet.client(2).commit_status(p.txid) == (VALID, block)

    result = gw.evaluate("qscc", "GetTransactionByID", "mychannel", p.txid)
    processed = transaction_pb2.ProcessedTransaction.FromString(result.payload)
    assert processed.validationCode == VALID
    recorded = parse_envelope(processed.transactionEnvelope.SerializeToString())
    shdr = recorded.signature_header
    assert recorded.txid == crypto.compute_txid(shdr.nonce, shdr.creator) == p.txid
    assert processed.transactionEnvelope.signature == env.signature


def test_blocks_are_hash_chained(devnet):
    gw = devnet.client(1)
    gw.submit_transaction("devkv", "put", key(), "x")
    info = ledger_pb2.BlockchainInfo.FromString(
        gw.evaluate("qscc", "GetChainInfo", "mychannel").payload
    )
    assert info.height >= 2
    prev = b""
    for n in range(info.height):
        raw = gw.evaluate("qscc", "GetBlockByNumber", "mychannel", str(n)).payload
        block = common_pb2.Block.FromString(raw)
        assert block.header.number == n
        assert block.header.previous_hash == prev
        assert block.header.data_hash == hashlib.sha256(b"".join(block.data.data)).digest()
        codes = block.metadata.metadata[common_pb2.TRANSACTIONS_FILTER]
        assert len(codes) == len(block.data.data)
        prev = header_hash(block.header)
    assert info.currentBlockHash == prev


def test_resubmitted_envelope_is_duplicate_and_status_stays_first(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "once")
    env = gw.endorse(p)
    gw.submit(p.txid, env)
    first = gw.commit_status(p.txid)
    assert first[0] == VALID
    height_before = devnet.health()["height"]
    gw.submit(p.txid, env)  # no dedupe at ordering: accepted and ordered again
    # Wait until the resubmission has been committed in a later block.
    gw.submit_transaction("devkv", "put", key(), "marker")
    assert devnet.health()["height"] > height_before
    assert gw.commit_status(p.txid) == first
    found_dup = False
    for n in range(first[1] + 1, devnet.health()["height"]):
        block = common_pb2.Block.FromString(
            gw.evaluate("qscc", "GetBlockByNumber", "mychannel", str(n)).payload
        )
        codes = block.metadata.metadata[common_pb2.TRANSACTIONS_FILTER]
        for i, raw in enumerate(block.data.data):
            if parse_envelope(raw).txid == p.txid:
                assert codes[i] == transaction_pb2.DUPLICATE_TXID
                found_dup = True
    assert found_dup


def test_endorsing_a_committed_txid_is_aborted_with_detail(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    gw.submit(p.txid, gw.endorse(p))
    gw.commit_status(p.txid)
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(p)
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert (
        exc.value.details() == "failed to endorse transaction, see attached details for more info"
    )
    (detail,) = error_details(exc.value)
    assert detail.msp_id == "Org1MSP"
    assert detail.address == f"peer0.org1.example.com:{devnet.org(1)['port']}"
    assert detail.message.startswith(f"duplicate transaction found [{p.txid}]")


def test_same_block_double_spend_one_valid_one_mvcc(devnet):
    gw = devnet.client(1)
    k = key()
    a, b = gw.proposal("devkv", "create", k, "a"), gw.proposal("devkv", "create", k, "b")
    env_a, env_b = gw.endorse(a), gw.endorse(b)  # both endorsed before either commits
    gw.submit(a.txid, env_a)
    gw.submit(b.txid, env_b)
    (code_a, block_a), (code_b, block_b) = gw.commit_status(a.txid), gw.commit_status(b.txid)
    assert block_a == block_b
    assert (code_a, code_b) == (VALID, MVCC)
    assert gw.evaluate("devkv", "get", k).payload == b"a"


def test_two_block_double_spend_one_valid_one_mvcc(devnet):
    gw = devnet.client(1)
    k = key()
    a, b = gw.proposal("devkv", "create", k, "a"), gw.proposal("devkv", "create", k, "b")
    env_a, env_b = gw.endorse(a), gw.endorse(b)
    gw.submit(a.txid, env_a)
    code_a, block_a = gw.commit_status(a.txid)
    gw.submit(b.txid, env_b)
    code_b, block_b = gw.commit_status(b.txid)
    assert block_b > block_a
    assert (code_a, code_b) == (VALID, MVCC)
    # A third proposal after the commit is refused at endorsement, with the existing record.
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(gw.proposal("devkv", "create", k, "c"))
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert "already recorded" in error_details(exc.value)[0].message


def test_one_org_endorsement_fails_two_org_policy(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    env = gw.endorse(p, orgs=("Org1MSP",))
    assert len(parse_envelope(env.SerializeToString()).endorsements) == 1
    gw.submit(p.txid, env)
    assert gw.commit_status(p.txid)[0] == transaction_pb2.ENDORSEMENT_POLICY_FAILURE


def test_tampered_proposal_signature_is_refused(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    p.signed.signature = crypto.sign(gw.key, b"something else")
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(p)
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert "access denied" in error_details(exc.value)[0].message


def test_tampered_envelope_signature_is_refused_by_orderer(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    env = gw.endorse(p)
    env.signature = crypto.sign(gw.key, env.payload + b"x")
    with pytest.raises(grpc.RpcError) as exc:
        gw.submit(p.txid, env)
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert "status=FORBIDDEN" in exc.value.details()


def test_tampered_endorsement_is_policy_failure(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    env = gw.endorse(p)
    payload = common_pb2.Payload.FromString(env.payload)
    tx = transaction_pb2.Transaction.FromString(payload.data)
    cap = transaction_pb2.ChaincodeActionPayload.FromString(tx.actions[0].payload)
    cap.action.endorsements[1].signature = cap.action.endorsements[0].signature
    tx.actions[0].payload = cap.SerializeToString()
    payload.data = tx.SerializeToString()
    env.payload = payload.SerializeToString()
    gw.sign_envelope(env)
    gw.submit(p.txid, env)
    assert gw.commit_status(p.txid)[0] == transaction_pb2.ENDORSEMENT_POLICY_FAILURE


def test_wrong_txid_is_refused(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    # Re-sign a proposal whose txid does not derive from its nonce and creator.
    from saga_devnet.protos import proposal_pb2

    prop = proposal_pb2.Proposal.FromString(p.signed.proposal_bytes)
    hdr = common_pb2.Header.FromString(prop.header)
    chdr = common_pb2.ChannelHeader.FromString(hdr.channel_header)
    chdr.tx_id = "0" * 64
    hdr.channel_header = chdr.SerializeToString()
    prop.header = hdr.SerializeToString()
    p.signed.proposal_bytes = prop.SerializeToString()
    p.signed.signature = crypto.sign(gw.key, p.signed.proposal_bytes)
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(p)
    assert error_details(exc.value)[0].message.startswith(
        "error validating proposal: incorrectly computed txid"
    )


def test_commit_status_waits_for_the_commit(devnet):
    gw = devnet.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    env = gw.endorse(p)
    result: list[tuple[int, int]] = []
    waiter = threading.Thread(target=lambda: result.append(gw.commit_status(p.txid, timeout=20)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not result  # not committed yet: the call is still waiting
    gw.submit(p.txid, env)
    waiter.join(20)
    assert result and result[0][0] == VALID


def test_commit_status_of_unknown_txid_is_bounded_by_caller_deadline(devnet):
    gw = devnet.client(1)
    with pytest.raises(grpc.RpcError) as exc:
        gw.commit_status("f" * 64, timeout=0.5)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_chaincode_error_on_evaluate(devnet):
    gw = devnet.client(2)
    with pytest.raises(grpc.RpcError) as exc:
        gw.evaluate("devkv", "get", key())
    assert exc.value.code() == grpc.StatusCode.UNKNOWN
    assert "chaincode response 500, key not found" in exc.value.details()


def test_max_message_count_cuts_a_block(devnet_factory):
    net = devnet_factory(batch_timeout=30, max_message_count=3)
    gw = net.client(1)
    props = [gw.proposal("devkv", "put", key(), "v") for _ in range(3)]
    envs = [gw.endorse(p) for p in props]
    for p, env in zip(props, envs, strict=True):
        gw.submit(p.txid, env)
    blocks = {gw.commit_status(p.txid, timeout=10)[1] for p in props}
    assert blocks == {1}  # well before the 30 s batch timeout
