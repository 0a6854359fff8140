"""The devnet's ledger survives SIGKILL, crashes at every commit stage, and clean restarts."""

from __future__ import annotations

import contextlib
import uuid

import grpc
import pytest

from saga_devnet.protos import ledger_pb2, transaction_pb2

VALID = transaction_pb2.VALID


def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def chain_height(gw) -> int:
    return int(
        ledger_pb2.BlockchainInfo.FromString(
            gw.evaluate("qscc", "GetChainInfo", "mychannel").payload
        ).height
    )


def test_sigkill_keeps_blocks_state_and_codes(devnet_factory):
    net = devnet_factory()
    gw = net.client(1)
    k = key()
    a, b = gw.proposal("devkv", "create", k, "a"), gw.proposal("devkv", "create", k, "b")
    env_a, env_b = gw.endorse(a), gw.endorse(b)
    gw.submit(a.txid, env_a)
    gw.submit(b.txid, env_b)
    status_a, status_b = gw.commit_status(a.txid), gw.commit_status(b.txid)
    assert (status_a[0], status_b[0]) == (VALID, transaction_pb2.MVCC_READ_CONFLICT)
    height = chain_height(gw)

    net.kill()
    net.start()
    gw = net.client(1)
    assert chain_height(gw) == height
    assert gw.commit_status(a.txid) == status_a
    assert gw.commit_status(b.txid) == status_b
    assert gw.evaluate("devkv", "get", k).payload == b"a"
    processed = transaction_pb2.ProcessedTransaction.FromString(
        gw.evaluate("qscc", "GetTransactionByID", "mychannel", b.txid).payload
    )
    assert processed.validationCode == transaction_pb2.MVCC_READ_CONFLICT
    # The restarted devnet still refuses the old txid and keeps extending the same chain.
    gw.submit(a.txid, env_a)
    _, code, block = gw.submit_transaction("devkv", "put", key(), "after")
    assert code == VALID and block >= height
    assert gw.commit_status(a.txid) == status_a


def test_sigterm_stops_cleanly(devnet_factory):
    net = devnet_factory()
    net.client(1).submit_transaction("devkv", "put", key(), "v")
    assert net.stop() == 0
    assert "stopping" in net.log_tail()


@pytest.mark.parametrize("point", ["after_submit", "before_block_write", "after_block_write"])
def test_crash_at_each_stage_loses_no_acknowledged_or_written_tx(devnet_factory, point):
    net = devnet_factory(faults=[f"crash_at={point}"])
    gw = net.client(1)
    k = key()
    p = gw.proposal("devkv", "create", k, "v")
    env = gw.endorse(p)
    # after_submit dies before replying: the outcome is unknown to the client.
    with contextlib.suppress(grpc.RpcError):
        gw.submit(p.txid, env, timeout=10)
    assert net.wait_exit(15) == 137
    net.faults = []
    net.start()
    gw = net.client(1)
    # The envelope reached durable storage before each crash point, so it commits exactly once.
    code, block = gw.commit_status(p.txid, timeout=15)
    assert code == VALID
    assert gw.evaluate("devkv", "get", k).payload == b"v"
    gw.submit(p.txid, env)  # resubmitting after the unknown outcome is harmless
    gw.submit_transaction("devkv", "put", key(), "marker")
    assert gw.commit_status(p.txid) == (code, block)
