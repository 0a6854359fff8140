"""The compose deployment's fabric-init job, run here with the official 2.5.16 binaries
(no container engine): the material, channel block, profiles and chaincode package it
leaves in the shared volume name the compose services, and a second run (every
`docker compose up` runs it again) changes nothing."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

from saga_fabricnet import compose
from saga_fabricnet.material import Layout, Org
from saga_fabricnet.state import ORGS
from tests.support.fabricnet import fabric_release


def _decode_block(release_bin: Path, block: Path) -> str:
    return subprocess.run(
        [str(release_bin / "configtxlator"), "proto_decode", "--type", "common.Block"],
        input=block.read_bytes(),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()


def _san(cert: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_fabric_init_leaves_a_network_addressed_by_service_names(tmp_path: Path) -> None:
    release = fabric_release()
    state = compose.init(tmp_path, release, compose.options(channel="payments"))
    layout = Layout(tmp_path)
    p = compose.ports()

    # The genesis block: orderer endpoints, Raft consenters and anchor peers.
    block = json.loads(_decode_block(release.bin_dir, layout.channel_block))
    groups = block["data"]["data"][0]["payload"]["data"]["config"]["channel_group"]["groups"]
    orderer = groups["Orderer"]
    endpoints = orderer["groups"]["OrdererOrg"]["values"]["Endpoints"]["value"]["addresses"]
    assert endpoints == [f"orderer{n}.example.com:{o.listen}" for n, o in enumerate(p.orderers)]
    consensus = orderer["values"]["ConsensusType"]["value"]
    assert consensus["type"] == "etcdraft"
    assert [(c["host"], c["port"]) for c in consensus["metadata"]["consenters"]] == [
        (f"orderer{n}.example.com", o.listen) for n, o in enumerate(p.orderers)
    ]
    for index in ORGS:
        org = Org(index)
        values = groups["Application"]["groups"][org.msp_id]["values"]
        anchors = values["AnchorPeers"]["value"]["anchor_peers"]
        assert anchors == [{"host": org.peer, "port": p.peers[index].listen}]

    # TLS: each node's certificate names its service, which is what the others dial.
    for n in range(compose.ORDERERS):
        assert f"DNS:orderer{n}.example.com" in _san(layout.orderer_dir(n) / "tls" / "server.crt")
    for index in ORGS:
        org = Org(index)
        assert f"DNS:{org.peer}" in _san(layout.peer_dir(org) / "tls" / "server.crt")
        profile = json.loads(layout.profile(org).read_text())
        assert profile["peers"][org.peer]["url"] == f"grpcs://{org.peer}:{p.peers[index].listen}"
        assert (layout.user_dir(org) / "msp" / "signcerts").is_dir()

    # The package the peers install dials the chaincode service; its id is recorded.
    with tarfile.open(layout.chaincode_package) as outer:
        code = outer.extractfile("code.tar.gz")
        assert code is not None
        with tarfile.open(fileobj=code) as inner:
            connection_file = inner.extractfile("connection.json")
            assert connection_file is not None
            connection = json.loads(connection_file.read())
    assert connection["address"] == f"{compose.CHAINCODE_HOST}:{p.chaincode}"
    assert state.package_id.startswith("sagafacts_1.0:")

    # The peers' core.yaml names the launcher's external builder at the volume's path.
    core = (layout.config / "core.yaml").read_text()
    assert f"path: {layout.builder}" in core
    assert (layout.builder / "bin" / "detect").stat().st_mode & 0o111

    # Again, as on the next `up`: nothing is regenerated.
    block_bytes = layout.channel_block.read_bytes()
    again = compose.init(tmp_path, release, compose.options(channel="payments"))
    assert again.package_id == state.package_id
    assert layout.channel_block.read_bytes() == block_bytes


def test_fabric_init_with_two_org1_peers_makes_peer1_and_lists_both(tmp_path: Path) -> None:
    """compose/fabric-network-ha.yml's init: peer1.org1's material names its service,
    the Org1 profile lists peer0 then peer1, and the state deploy reads names peer1,
    so fabric-setup joins it and installs on it."""
    release = fabric_release()
    state = compose.init(tmp_path, release, compose.options(org1_peers=2))
    layout = Layout(tmp_path)
    org1 = Org(1)
    peer1 = org1.peer_host(1)
    assert f"DNS:{peer1}" in _san(layout.peer_dir(org1, 1) / "tls" / "server.crt")
    profile = json.loads(layout.profile(org1).read_text())
    assert profile["organizations"]["Org1"]["peers"] == [org1.peer, peer1]
    assert profile["peers"][peer1]["url"] == f"grpcs://{peer1}:10051"
    assert profile["peers"][peer1]["grpcOptions"]["ssl-target-name-override"] == peer1
    org2 = json.loads(layout.profile(Org(2)).read_text())
    assert org2["organizations"]["Org2"]["peers"] == [Org(2).peer]
    assert state.options.org1_peers == 2
    assert state.ports.peer(1, 1).listen == 10051
    assert (org1, 1) in compose.peer_refs(state.options.org1_peers)
    # Anchor peers stay peer0 of each org: peer1 is found through gossip.
    block = json.loads(_decode_block(release.bin_dir, layout.channel_block))
    groups = block["data"]["data"][0]["payload"]["data"]["config"]["channel_group"]["groups"]
    values = groups["Application"]["groups"][org1.msp_id]["values"]
    assert values["AnchorPeers"]["value"]["anchor_peers"] == [{"host": org1.peer, "port": 7051}]
