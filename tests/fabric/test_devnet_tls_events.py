"""Mutual TLS on the Gateway port, and the ChaincodeEvents stream."""

from __future__ import annotations

import uuid

import grpc
import pytest

from saga.adapters.fabric import crypto
from saga_devnet.protos import gateway_pb2, transaction_pb2
from saga_devnet.rawclient import RawGateway


def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def test_mutual_tls_requires_a_client_certificate(devnet_factory):
    net = devnet_factory(mutual_tls=True)
    gw = net.client(1)  # with users/User1@org1.example.com/tls/client.{crt,key}
    assert gw.submit_transaction("devkv", "put", key(), "v")[1] == transaction_pb2.VALID
    # Org2's client cert is accepted too: any channel member's TLS CA is trusted.
    assert net.client(2).evaluate("devkv", "keys", orgs=("Org1MSP",)).status == 200
    org = net.org(1)
    anonymous = RawGateway.for_user(net.org_dir(1), msp_id=org["msp_id"], port=org["port"])
    try:
        with pytest.raises(grpc.RpcError) as exc:
            anonymous.evaluate("devkv", "keys")
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        anonymous.close()


def test_chaincode_events_stream(devnet):
    gw = devnet.client(1)
    start = devnet.health()["height"]
    k1, k2 = key(), key()
    txid1 = gw.submit_transaction("devkv", "create", k1, "v")[0]
    txid2 = gw.submit_transaction("devkv", "put", k2, "v")[0]
    req = gateway_pb2.ChaincodeEventsRequest(
        channel_id="mychannel", chaincode_id="devkv", identity=gw.creator
    )
    req.start_position.specified.number = start
    raw = req.SerializeToString()
    stream = gw.stub.ChaincodeEvents(
        gateway_pb2.SignedChaincodeEventsRequest(request=raw, signature=crypto.sign(gw.key, raw)),
        timeout=10,
    )
    seen = []
    for resp in stream:
        for ev in resp.events:
            seen.append((ev.tx_id, ev.event_name, ev.payload.decode(), resp.block_number >= start))
        if len(seen) >= 2:
            stream.cancel()
            break
    assert seen == [(txid1, "create", k1, True), (txid2, "put", k2, True)]


def test_chaincode_events_refuse_a_bad_signature(devnet):
    gw = devnet.client(1)
    raw = gateway_pb2.ChaincodeEventsRequest(
        channel_id="mychannel", chaincode_id="devkv", identity=gw.creator
    ).SerializeToString()
    stream = gw.stub.ChaincodeEvents(
        gateway_pb2.SignedChaincodeEventsRequest(request=raw, signature=crypto.sign(gw.key, b"x")),
        timeout=5,
    )
    with pytest.raises(grpc.RpcError) as exc:
        next(iter(stream))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
