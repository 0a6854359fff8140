"""The devnet running the real sagafacts chaincode over the shim (chaincode-as-a-service)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import pytest

from saga_devnet.chaincode_launcher import chaincode_running
from saga_devnet.protos import transaction_pb2
from saga_devnet.rawclient import error_details
from tests.support.ports import free_port

CC_NAME = "sagafacts"
CC_ID = "sagafacts_1.0:devnet"


@pytest.fixture(scope="module")
def chaincode_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    address = f"127.0.0.1:{free_port()}"
    with chaincode_running(address, CC_ID, tmp_path_factory.mktemp("cc") / "chaincode.log"):
        yield address


@pytest.fixture(scope="module")
def net(chaincode_address, module_devnet_factory):
    return module_devnet_factory(
        chaincodes={
            CC_NAME: {
                "address": chaincode_address,
                "package_id": CC_ID,
                "policy": "AND('Org1MSP.peer','Org2MSP.peer')",
            }
        }
    )


def test_record_payment_through_the_shim(net):
    gw = net.client(1)
    key = f"saga-{uuid.uuid4().hex[:8]}/pay/do"
    txid, code, _ = gw.submit_transaction(CC_NAME, "RecordPayment", key, "order-1", "1250", "EUR")
    assert code == transaction_pb2.VALID
    record = json.loads(gw.evaluate(CC_NAME, "GetRecord", key).payload)
    assert record["txid"] == txid and record["recorded_by"] == "Org1MSP"


def test_same_key_twice_one_valid_one_mvcc_then_already_recorded(net):
    gw = net.client(2)
    key = f"saga-{uuid.uuid4().hex[:8]}/pay/do"
    a = gw.proposal(CC_NAME, "RecordPayment", key, "order-2", "100", "EUR")
    b = gw.proposal(CC_NAME, "RecordPayment", key, "order-2", "100", "EUR")
    env_a, env_b = gw.endorse(a), gw.endorse(b)
    gw.submit(a.txid, env_a)
    gw.submit(b.txid, env_b)
    codes = {gw.commit_status(a.txid)[0], gw.commit_status(b.txid)[0]}
    assert codes == {transaction_pb2.VALID, transaction_pb2.MVCC_READ_CONFLICT}
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(gw.proposal(CC_NAME, "RecordPayment", key, "order-2", "100", "EUR"))
    assert exc.value.code() == grpc.StatusCode.ABORTED
    message = error_details(exc.value)[0].message
    assert message.startswith("chaincode response 409, ALREADY_RECORDED:")
