"""Which gateway peers a client uses, in what order, and which failures move it.

What the client does on a real network with a peer down is in
tests/fault/chain/test_ha_fabric.py; here: the profile and settings that give the
list, and the reading of a failed call (a gRPC answer, no network needed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from saga.adapters.fabric import (
    CommitStatusError,
    EndorseError,
    ErrorDetail,
    GatewayEndpoint,
    SubmitError,
    parse_connection_profile,
)
from saga.adapters.fabric.peers import PeerSet, unreachable
from saga.bootstrap import Container
from saga.config import ConfigError, Settings
from tests.fabric.client_fixtures import CertAuthority, write_msp_dir

REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:7051: "
    "Failed to connect to remote host: Connection refused"
)


def _profile(org_peers: list[str], ports: dict[str, int]) -> dict[str, Any]:
    return {
        "name": "org1",
        "client": {"organization": "Org1"},
        "organizations": {"Org1": {"mspid": "Org1MSP", "peers": org_peers}},
        "peers": {name: {"url": f"grpc://localhost:{port}"} for name, port in ports.items()},
    }


PORTS = {"peer0.org1": 7051, "peer1.org1": 8051, "peer0.org2": 9051}


def test_the_profile_gives_the_orgs_peers_in_order_the_preferred_one_first() -> None:
    profile = parse_connection_profile(_profile(["peer0.org1", "peer1.org1"], PORTS))
    assert [n for n, _ in profile.gateway_peers()] == ["peer0.org1", "peer1.org1"]
    assert [n for n, _ in profile.gateway_peers(first="peer1.org1")] == [
        "peer1.org1",
        "peer0.org1",
    ]
    # A list given by name is taken as it is, in its order (another org's peer too:
    # the operator said so).
    named = profile.gateway_peers(["peer1.org1", "peer0.org2"])
    assert [e.address for _, e in named] == ["localhost:8051", "localhost:9051"]
    with pytest.raises(ValueError, match=r"no peer 'peer7\.org1'"):
        profile.gateway_peers(["peer7.org1"])
    with pytest.raises(ValueError, match="listed twice"):
        profile.gateway_peers(["peer1.org1", "peer1.org1"])
    # A profile whose org lists no peers: its first peer, as before.
    bare = parse_connection_profile(_profile([], {"p": 7051}))
    assert [n for n, _ in bare.gateway_peers()] == ["p"]


def _settings(tmp_path: Path, **env: str) -> Settings:
    path = tmp_path / "connection-org1.json"
    path.write_text(json.dumps(_profile(["peer0.org1", "peer1.org1"], PORTS)))
    msp, _ = write_msp_dir(tmp_path / "user", CertAuthority.create("ca.org1.example.com"))
    base = {"SAGA_FABRIC_PROFILE": str(path), "SAGA_FABRIC_MSP_DIR": str(msp)}
    return Settings.from_env({**base, **env})


def test_the_container_gives_every_client_the_orgs_peers(tmp_path: Path) -> None:
    peers, identity = Container(_settings(tmp_path)).fabric_peers()
    assert [e.address for e in peers.endpoints] == ["localhost:7051", "localhost:8051"]
    assert identity.msp_id == "Org1MSP"
    preferred, _ = Container(_settings(tmp_path, SAGA_FABRIC_PEER="peer1.org1")).fabric_peers()
    assert [e.address for e in preferred.endpoints] == ["localhost:8051", "localhost:7051"]
    listed, _ = Container(_settings(tmp_path, SAGA_FABRIC_PEERS=" peer1.org1 ,")).fabric_peers()
    assert [e.address for e in listed.endpoints] == ["localhost:8051"]
    # One PeerSet per process: a client opened again starts where the last one moved.
    container = Container(_settings(tmp_path))
    assert container.fabric_peers()[0] is container.fabric_peers()[0]


def test_both_peer_settings_at_once_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SAGA_FABRIC_PEER and SAGA_FABRIC_PEERS"):
        _settings(tmp_path, SAGA_FABRIC_PEER="peer0.org1", SAGA_FABRIC_PEERS="peer1.org1")


@pytest.mark.parametrize(
    "message",
    [
        REFUSED,
        "Socket closed",
        "recvmsg:Connection reset by peer",
        "GOAWAY received",
        "keepalive watchdog timeout",
    ],
)
def test_a_connection_that_failed_moves_the_client(message: str) -> None:
    for error in (EndorseError, SubmitError, CommitStatusError):
        assert unreachable(
            error(txid="t", code=grpc.StatusCode.UNAVAILABLE, status_message=message)
        )


@pytest.mark.parametrize(
    ("code", "message", "details"),
    [
        # The gateway answered: its own UNAVAILABLE (orderers away) and its
        # explained failures would be said alike by any peer of the org.
        (grpc.StatusCode.UNAVAILABLE, "no orderer nodes available", ()),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses",
            (ErrorDetail("orderer0:7050", "OrdererMSP", "connection refused"),),
        ),
        (grpc.StatusCode.ABORTED, "failed to endorse transaction, see attached details", ()),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ()),
        (grpc.StatusCode.PERMISSION_DENIED, "access denied", ()),
    ],
)
def test_an_answer_of_the_gateway_does_not_move_the_client(
    code: grpc.StatusCode, message: str, details: tuple[ErrorDetail, ...]
) -> None:
    error = EndorseError(txid="t", code=code, status_message=message, details=details)
    assert not unreachable(error)


def test_the_peer_set_moves_once_per_dead_peer_and_wraps_around() -> None:
    peers = PeerSet([GatewayEndpoint(f"localhost:{p}") for p in (1, 2, 3)])
    error = SubmitError(txid="t", code=grpc.StatusCode.UNAVAILABLE, status_message=REFUSED)
    assert (peers.current, peers.order()) == (0, [0, 1, 2])
    peers.moved_from(0, error)
    # A second call that failed on peer 0 before the move does not skip peer 1.
    peers.moved_from(0, error)
    assert (peers.current, peers.order()) == (1, [1, 2, 0])
    peers.moved_from(1, error)
    peers.moved_from(2, error)
    assert peers.current == 0
    with pytest.raises(ValueError, match="listed twice"):
        PeerSet([GatewayEndpoint("localhost:1"), GatewayEndpoint("localhost:1")])
    with pytest.raises(ValueError, match="at least one"):
        PeerSet([])
