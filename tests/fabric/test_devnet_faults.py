"""Fault knobs, from the admin API and from the command line."""

from __future__ import annotations

import time
import urllib.error
import uuid

import grpc
import pytest

from saga_devnet.protos import transaction_pb2
from saga_devnet.rawclient import error_details

VALID = transaction_pb2.VALID


def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _reset(devnet):
    devnet.reset_faults()
    yield
    devnet.reset_faults()


def test_dropped_submit_reply_still_orders_the_envelope(devnet):
    gw = devnet.client(1)
    devnet.set_faults(drop_submit_reply=1)
    p = gw.proposal("devkv", "put", key(), "v")
    env = gw.endorse(p)
    with pytest.raises(grpc.RpcError) as exc:
        gw.submit(p.txid, env)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert gw.commit_status(p.txid)[0] == VALID  # it was ordered all the same


def test_dropped_submit_reply_hang_mode_hits_the_deadline(devnet):
    gw = devnet.client(1)
    devnet.set_faults(drop_submit_reply=1, drop_submit_mode="hang")
    p = gw.proposal("devkv", "put", key(), "v")
    env = gw.endorse(p)
    with pytest.raises(grpc.RpcError) as exc:
        gw.submit(p.txid, env, timeout=1)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gw.commit_status(p.txid)[0] == VALID


def test_stalled_commits_keep_commit_status_waiting(devnet):
    gw = devnet.client(1)
    devnet.set_faults(stall_commits=True)
    p = gw.proposal("devkv", "put", key(), "v")
    gw.submit(p.txid, gw.endorse(p))
    with pytest.raises(grpc.RpcError) as exc:
        gw.commit_status(p.txid, timeout=1.5)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert devnet.health()["pending"] == 1
    devnet.set_faults(stall_commits=False)
    assert gw.commit_status(p.txid, timeout=10)[0] == VALID


def test_commit_delay(devnet):
    gw = devnet.client(1)
    devnet.set_faults(commit_delay=1.5)
    started = time.monotonic()
    _, code, _ = gw.submit_transaction("devkv", "put", key(), "v")
    assert code == VALID and time.monotonic() - started >= 1.5


def test_commit_status_hang(devnet):
    gw = devnet.client(1)
    txid, code, block = gw.submit_transaction("devkv", "put", key(), "v")
    devnet.set_faults(commit_status_hang=1)
    with pytest.raises(grpc.RpcError) as exc:
        gw.commit_status(txid, timeout=1)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gw.commit_status(txid) == (code, block)  # only the next call was hung


def test_refused_endorsement(devnet):
    gw = devnet.client(1)
    devnet.set_faults(refuse_endorsement=["Org2MSP"], refuse_endorsement_message="no thanks")
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(gw.proposal("devkv", "put", key(), "v"))
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert exc.value.details().startswith("failed to collect enough transaction endorsements")
    (detail,) = error_details(exc.value)
    assert (detail.msp_id, detail.message) == ("Org2MSP", "no thanks")
    devnet.set_faults(refuse_endorsement=["*"])
    with pytest.raises(grpc.RpcError) as exc:
        gw.endorse(gw.proposal("devkv", "put", key(), "v"))
    assert exc.value.details().startswith("failed to endorse transaction")


def test_forced_mvcc_conflict(devnet):
    gw = devnet.client(1)
    devnet.set_faults(force_mvcc_conflict=1)
    k = key()
    _, code, _ = gw.submit_transaction("devkv", "create", k, "v")
    assert code == transaction_pb2.MVCC_READ_CONFLICT
    with pytest.raises(grpc.RpcError):
        gw.evaluate("devkv", "get", k)  # an invalid transaction leaves state untouched
    assert gw.submit_transaction("devkv", "create", k, "v")[1] == VALID


def test_unknown_knob_is_refused(devnet):
    with pytest.raises(urllib.error.HTTPError) as exc:
        devnet.set_faults(no_such_knob=1)
    assert exc.value.code == 400


def test_knob_from_command_line_and_crash_from_api(devnet_factory):
    net = devnet_factory(faults=["drop_submit_reply=1"])
    gw = net.client(1)
    p = gw.proposal("devkv", "put", key(), "v")
    env = gw.endorse(p)
    with pytest.raises(grpc.RpcError):
        gw.submit(p.txid, env)
    assert gw.commit_status(p.txid)[0] == VALID
    net.crash()
    assert net.proc is not None and net.proc.returncode == 137
    net.faults = []
    net.start()
    assert net.client(1).commit_status(p.txid)[0] == VALID
