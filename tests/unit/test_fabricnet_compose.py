"""saga_fabricnet.compose addresses the launcher's network by compose service names:
configtx.yaml, connection profiles, node environments and admin commands name a
member by its service and port, never 127.0.0.1 (which, in a container, is itself)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import yaml

from saga_fabricnet import compose
from saga_fabricnet.admin import AdminCommandFailed
from saga_fabricnet.material import Layout, Org
from saga_fabricnet.release import FabricRelease
from saga_fabricnet.state import ORGS

LOOPBACK = re.compile(r"127\.0\.0\.1|localhost")


def test_every_port_names_one_member() -> None:
    # The table covers the largest topology (peer1.org1 of compose/fabric-network-ha.yml).
    p = compose.ports(compose.MAX_ORG1_PEERS)
    numbers = [p.chaincode]
    for o in p.orderers:
        numbers += [o.listen, o.admin, o.operations]
    for peer in [*p.peers.values(), *(q for more in p.more_peers.values() for q in more)]:
        numbers += [peer.listen, peer.chaincode, peer.operations]
    assert len(numbers) == len(set(numbers))
    assert set(compose.hosts()) == set(numbers)
    assert set(compose.hosts().values()) == {
        *compose.services(compose.MAX_ORG1_PEERS),
        compose.CHAINCODE_HOST,
    }
    assert compose.ports().more_peers == {}, "the default network has one peer per org"


def test_readdress_swaps_members_addresses_only() -> None:
    assert compose.readdress("127.0.0.1:8050") == "orderer1.example.com:8050"
    assert compose.readdress("grpcs://localhost:9051") == "grpcs://peer0.org2.example.com:9051"
    assert compose.readdress("127.0.0.1:9999") == "chaincode:9999"
    # Not a member's port (the profile's Fabric CA entry), and not an address.
    assert compose.readdress("https://localhost:7054") == "https://localhost:7054"
    assert compose.readdress("127.0.0.1") == "127.0.0.1"


def test_configtx_is_the_launchers_with_service_names(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    text = compose.render_configtx(layout, compose.options(channel="payments"))
    assert not LOOPBACK.search(text), text
    profile = yaml.safe_load(text)["Profiles"]["SagaChannel"]
    p = compose.ports()
    orderer_org = profile["Orderer"]["Organizations"][0]
    assert orderer_org["OrdererEndpoints"] == [
        f"orderer{n}.example.com:{o.listen}" for n, o in enumerate(p.orderers)
    ]
    raft = profile["Orderer"]["EtcdRaft"]
    assert profile["Orderer"]["OrdererType"] == "etcdraft"
    assert [(c["Host"], c["Port"]) for c in raft["Consenters"]] == [
        (f"orderer{n}.example.com", o.listen) for n, o in enumerate(p.orderers)
    ]
    for n, consenter in enumerate(raft["Consenters"]):
        # The certificates cryptogen makes for that orderer (its SANs name the service).
        assert consenter["ServerTLSCert"] == str(layout.orderer_dir(n) / "tls" / "server.crt")
    anchors = {o["ID"]: o["AnchorPeers"] for o in profile["Application"]["Organizations"]}
    for index in ORGS:
        org = Org(index)
        assert anchors[org.msp_id] == [{"Host": org.peer, "Port": p.peers[index].listen}]
    # The launcher's policies and batch settings come through unchanged.
    assert profile["Application"]["Policies"]["Endorsement"]["Rule"] == "MAJORITY Endorsement"
    assert profile["Orderer"]["BatchTimeout"] == "2000ms"


def test_connection_profile_names_the_peers_service(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for index in ORGS:
        org = Org(index)
        (layout.org_dir(org) / "tlsca").mkdir(parents=True)
        (layout.org_dir(org) / "ca").mkdir(parents=True)
        layout.org_tls_ca(org).write_text("TLS CA PEM\n")
        (layout.org_dir(org) / "ca" / f"ca.{org.domain}-cert.pem").write_text("CA PEM\n")
        profile = compose.connection_profile(layout, org)
        peer = profile["peers"][org.peer]
        assert peer["url"] == f"grpcs://{org.peer}:{compose.ports().peers[index].listen}"
        assert peer["tlsCACerts"]["pem"] == "TLS CA PEM\n"
        assert profile["organizations"][org.name]["mspid"] == org.msp_id


@pytest.mark.parametrize("service", compose.services())
def test_node_environment_listens_on_all_interfaces_and_dials_services(service: str) -> None:
    env = compose.node_environment(service)
    assert not any(LOOPBACK.search(v) for v in env.values()), env
    assert not {"PATH", "HOME"} & set(env)
    for key, value in env.items():
        if key.endswith("LISTENADDRESS"):
            assert value.startswith("0.0.0.0"), key
    # Config and identity from the shared volume, the ledger in the node's own.
    assert env["FABRIC_CFG_PATH"] == str(compose.ROOT / "config")
    data_keys = [k for k, v in env.items() if v.startswith(compose.NODE_DATA)]
    assert data_keys, env
    assert not any("/data/" in v for v in env.values())
    if service.startswith("peer"):
        port = env["CORE_PEER_ADDRESS"].split(":")[1]
        assert env["CORE_PEER_ADDRESS"] == f"{service}:{port}"
        assert env["CORE_PEER_LISTENADDRESS"] == f"0.0.0.0:{port}"


def test_node_environment_refuses_an_unknown_service() -> None:
    with pytest.raises(ValueError, match="no Fabric node"):
        compose.node_environment("peer1.org1.example.com")


# -- the admin commands, against recording stand-ins for peer and osnadmin ------------


def _fake_release(
    tmp_path: Path, osnadmin_says: str, joined: str = ""
) -> tuple[FabricRelease, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    answer = tmp_path / "osnadmin-answer"
    answer.write_text(osnadmin_says)
    scripts = {
        # Records where it was told to go; `channel list` names the joined channels.
        "peer": (
            f'#!/bin/sh\necho "peer $* @ $CORE_PEER_ADDRESS" >> {calls}\n'
            f'[ "$1 $2" = "channel list" ] && printf "{joined}"\nexit 0\n'
        ),
        "osnadmin": f'#!/bin/sh\necho "osnadmin $*" >> {calls}\ncat {answer}\n',
    }
    for name in ("orderer", "configtxgen", "cryptogen"):
        scripts[name] = "#!/bin/sh\nexit 1\n"
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    cfg = tmp_path / "config"
    cfg.mkdir()
    return FabricRelease(bin_dir, cfg), calls


def _admin(
    tmp_path: Path, osnadmin_says: str = "Status: 201\n", joined: str = ""
) -> tuple[compose.ComposeAdmin, Path]:
    release, calls = _fake_release(tmp_path, osnadmin_says, joined)
    state = compose._state(compose.options(), package_id="sagafacts_1.0:abc")
    return compose.ComposeAdmin(release, Layout(tmp_path / "net"), state), calls


def test_admin_commands_dial_service_names(tmp_path: Path) -> None:
    admin, calls = _admin(tmp_path)
    orgs = [Org(i) for i in ORGS]
    for n in range(compose.ORDERERS):
        admin.join_orderer(n)
    for org in orgs:
        admin.join_peer(org)
        admin.approve(org)
    admin.commit(orgs)
    log = calls.read_text()
    assert not LOOPBACK.search(log), log
    for n, o in enumerate(compose.ports().orderers):
        assert f"-o orderer{n}.example.com:{o.admin}" in log
    for index in ORGS:
        org = Org(index)
        address = f"{org.peer}:{compose.ports().peers[index].listen}"
        assert f"peer channel join -b {admin.layout.channel_block} @ {address}" in log
        assert f"--peerAddresses {address}" in log
    assert "approveformyorg -o orderer0.example.com:7050" in log


def test_a_channel_the_orderer_already_has_is_joined(tmp_path: Path) -> None:
    admin, calls = _admin(
        tmp_path, 'Status: 405\n{"error": "cannot join: channel already exists"}\n'
    )
    admin.join_orderer(0)  # no AdminCommandFailed: the orderer has the channel
    joins = [line for line in calls.read_text().splitlines() if "osnadmin channel join" in line]
    assert len(joins) == 1, joins  # taken as joined at once, not retried


def test_an_orderer_refusing_the_join_fails_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # osnadmin exits 0 whatever the orderer answered; the status decides.
    admin, _ = _admin(tmp_path, 'Status: 400\n{"error": "bad block"}\n')
    clock = iter([0.0, 100.0, 200.0])
    monkeypatch.setattr(compose.time, "monotonic", lambda: next(clock))
    with pytest.raises(AdminCommandFailed, match="bad block"):
        admin.join_orderer(0)


def test_a_peer_already_on_the_channel_is_not_joined_again(tmp_path: Path) -> None:
    admin, calls = _admin(tmp_path, joined="Channels peers has joined: \\nmychannel\\n")
    admin.join_peer(Org(1))
    assert "channel join" not in calls.read_text()
