"""`saga ledger ping` against a real Fabric peer that requires client TLS certificates
(peer.tls.clientAuthRequired): the user's TLS pair in SAGA_FABRIC_TLS_CERT / _KEY is
what lets it in, and without it the command says so.

The network comes from saga_fabricnet (official binaries, plain processes). Until the
shared fixture in tests/support/fabricnet.py exists, this module starts its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from saga.cli import app
from saga_fabricnet import FabricBinaryMissing, FabricNetwork, FabricRelease, NetworkOptions

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


def _release() -> FabricRelease:
    # FABRIC_BIN (and FABRIC_CFG_PATH) win; else what ../shared/fabric/install.sh
    # unpacked into the repo's .fabric/ (gitignored).
    unpacked = REPO / ".fabric" / "fabric-2.5.16"
    try:
        if os.environ.get("FABRIC_BIN") or not unpacked.exists():
            return FabricRelease.locate()
        return FabricRelease.locate(folder=unpacked)
    except FabricBinaryMissing as exc:
        # A missing Fabric is a failure, not a skip (DESIGN.md, real services).
        pytest.fail(f"{exc}; or run ../shared/fabric/install.sh .fabric")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNetwork]:
    net = FabricNetwork(
        tmp_path_factory.mktemp("fabricnet"),
        _release(),
        NetworkOptions(client_auth_required=True, batch_timeout=0.5),
    )
    try:
        net.up()
        yield net
    finally:
        net.down()


def _env(net: FabricNetwork, **more: str) -> dict[str, str]:
    return {
        "SAGA_FABRIC_PROFILE": str(net.profile(1)),
        "SAGA_FABRIC_MSP_DIR": str(net.msp_dir(1)),
        "SAGA_FABRIC_MSP_ID": "",
        "SAGA_FABRIC_PEER": "",
        "SAGA_FABRIC_TLS_CERT": "",
        "SAGA_FABRIC_TLS_KEY": "",
        "SAGA_FABRIC_CHANNEL": net.channel,
        "SAGA_LOG_LEVEL": "WARNING",
        **more,
    }


def _ping(env: dict[str, str], *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["ledger", "ping", *args], env=env)
    assert result.exit_code == code, result.output
    return result


def test_ping_a_peer_that_requires_client_certificates(network: FabricNetwork) -> None:
    # organizations/peerOrganizations/org1.example.com/users/User1@org1.example.com/tls/
    cert, key = network.client_tls(1)
    assert cert.name == "client.crt" and key.name == "client.key"
    with_pair = _env(network, SAGA_FABRIC_TLS_CERT=str(cert), SAGA_FABRIC_TLS_KEY=str(key))

    answered = json.loads(_ping(with_pair, "--json").stdout)
    assert answered["mutual_tls"] is True
    assert answered["peer"] == "peer0.org1.example.com"
    assert answered["msp_id"] == "Org1MSP" and answered["height"] >= 1
    assert "(mutual TLS) answered" in _ping(with_pair).stdout

    # Without the pair the Go peer ends the handshake with a "certificate required"
    # alert, which gRPC reports as UNAVAILABLE ... TSI_DATA_CORRUPTED.
    refused = _ping(_env(network), "--timeout", "10", code=1)
    assert "UNAVAILABLE" in refused.output and "TSI_DATA_CORRUPTED" in refused.output
    assert "the peer may require a client TLS certificate" in refused.output
    assert "set SAGA_FABRIC_TLS_CERT and SAGA_FABRIC_TLS_KEY" in refused.output
