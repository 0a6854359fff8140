"""saga_fabricnet brings up a real Fabric network (2.5 and 3.1) that the product's own
Gateway client uses, and every member can be killed and started again."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga.adapters.fabric import EndorseError, SigningIdentity, load_connection_profile
from saga_fabricnet import FabricBinaryMissing, FabricNetwork, FabricRelease, NetworkOptions
from tests.support.fabricnet import (
    REPO,
    TEST_BATCH_TIMEOUT,
    RealLedgerNet,
    fabric_31_release,
    fabric_release,
    real_network,
)

CC = "sagafacts"
BOTH = ["Org1MSP", "Org2MSP"]


@pytest.fixture(scope="module", params=["2.5", "3.1"], name="net")
def net_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealLedgerNet]:
    release = fabric_release() if request.param == "2.5" else fabric_31_release()
    assert release.version.startswith(request.param)
    options = NetworkOptions(batch_timeout=TEST_BATCH_TIMEOUT)
    with real_network(tmp_path_factory.mktemp(f"fabric{request.param}"), release, options) as net:
        yield net


def record(net: RealLedgerNet, org: int = 1) -> str:
    key = f"launcher-{uuid.uuid4()}"
    client = net.gateway(org)
    prepared = client.prepare(net.channel, CC, "RecordFact", [key, "probe", '{"n":1}'])
    client.submit(prepared)
    result = client.commit_status(net.channel, prepared.txid, timeout=30)
    assert result.valid, result
    return key


def test_up_reports_version_and_time(net: RealLedgerNet) -> None:
    network = net.network
    assert network.ready_seconds is not None and network.ready_seconds < 90
    assert network.members == [
        "orderer0",
        "orderer1",
        "orderer2",
        "peer0.org1",
        "peer0.org2",
        "chaincode",
    ]
    assert all(network.running(m) for m in network.members)
    state = json.loads((network.dir / "fabricnet.json").read_text())
    assert state["package_id"].startswith("sagafacts_1.0:")
    assert (network.dir / "logs" / "peer0.org1.log").is_file()


def test_profile_and_msp_load_with_the_product_client(net: RealLedgerNet) -> None:
    for org in (1, 2):
        profile = load_connection_profile(net.profile(org))
        assert profile.msp_id == f"Org{org}MSP"
        endpoint = profile.endpoint()
        assert endpoint.address.startswith("localhost:")
        assert endpoint.server_name_override == f"peer0.org{org}.example.com"
        identity = SigningIdentity.from_msp_dir(profile.msp_id, net.msp_dir(org))
        assert identity.msp_id == profile.msp_id
        assert (net.msp_dir(org).parent / "tls" / "client.crt").is_file()


def test_submit_commits_valid_and_both_orgs_read_it(net: RealLedgerNet) -> None:
    key = record(net, org=2)
    got = json.loads(net.gateway(1).evaluate(net.channel, CC, "GetRecord", [key]))
    assert got["key"] == key
    assert got["recorded_by"] == "Org2MSP"


def test_leader_detection(net: RealLedgerNet) -> None:
    leader = net.network.raft_leader()
    assert leader in net.network.orderers


def test_peer_kill_and_restart_recovers(net: RealLedgerNet) -> None:
    network = net.network
    network.kill("peer0.org2")
    assert not network.running("peer0.org2")
    with pytest.raises(EndorseError):
        net.gateway(1).prepare(net.channel, CC, "GetRecord", ["x"], endorsing_orgs=BOTH)
    network.start("peer0.org2")
    network.wait_ready(timeout=60)
    record(net, org=2)


def test_chaincode_kill_and_restart_recovers(net: RealLedgerNet) -> None:
    network = net.network
    network.kill("chaincode")
    with pytest.raises(EndorseError):
        net.gateway(1).prepare(net.channel, CC, "GetRecord", ["x"], timeout=10)
    network.start("chaincode")
    network.wait_ready(timeout=60)
    record(net)


def test_raft_leader_kill_and_restart_recovers(net: RealLedgerNet) -> None:
    network = net.network
    old = network.raft_leader()
    network.kill(old)
    # Two of three orderers elect a new leader and keep ordering.
    new = network.raft_leader(timeout=30)
    assert new != old
    record(net)
    network.start(old)
    network.wait_ready(timeout=60)
    record(net)


def test_cli_acts_on_the_running_network(net: RealLedgerNet) -> None:
    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "saga_fabricnet", *args, "--dir", str(net.network.dir)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert cli("leader").strip() in net.network.orderers
    assert "stopped" in cli("stop", "chaincode")
    assert not net.network.running("chaincode")
    cli("start", "chaincode")
    assert "chaincode    running" in cli("status")
    net.network.wait_ready(timeout=60)
    record(net)


def test_missing_binary_fails_naming_fabric_bin(tmp_path: Path) -> None:
    with pytest.raises(FabricBinaryMissing, match="FABRIC_BIN"):
        FabricRelease.locate(folder=tmp_path)
    with pytest.raises(pytest.fail.Exception, match="FABRIC_BIN"):
        fabric_release(tmp_path)


def test_failed_up_stops_what_it_started(tmp_path: Path) -> None:
    real = fabric_release()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for binary in real.bin_dir.iterdir():
        (fake_bin / binary.name).symlink_to(binary)
    # An orderer that dies at once: up() must fail and leave no peer running.
    (fake_bin / "orderer").unlink()
    (fake_bin / "orderer").write_text("#!/bin/sh\necho broken orderer >&2\nexit 1\n")
    (fake_bin / "orderer").chmod(0o755)
    net = FabricNetwork(tmp_path / "net", FabricRelease(fake_bin, real.cfg_dir))
    with pytest.raises(RuntimeError, match="orderer"):
        net.up(timeout=60)
    assert not any(net.running(m) for m in net.members)
    assert net.state.pids == {}
