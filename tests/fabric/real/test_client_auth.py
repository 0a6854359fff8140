"""client_auth_required: the peers demand a client TLS certificate (mutual TLS).
User1's cryptogen tls/client.crt passes, a client without one is refused at the
handshake, and `saga ledger ping` says which settings let it in
(SAGA_FABRIC_TLS_CERT / SAGA_FABRIC_TLS_KEY)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from saga.adapters.fabric import (
    EndorseError,
    GatewayClient,
    SigningIdentity,
    load_connection_profile,
)
from saga.entrypoints.cli.main import app
from tests.support.fabricnet import RealLedgerNet

pytestmark = pytest.mark.parametrize(
    "real_sagafacts_net", [{"client_auth_required": True}], indirect=True
)
runner = CliRunner()


def test_user_with_client_certificate_submits(real_sagafacts_net: RealLedgerNet) -> None:
    net = real_sagafacts_net
    key = f"mtls-{uuid.uuid4()}"
    net.gateway(2).submit_transaction(net.channel, "sagafacts", "RecordFact", [key, "t", "{}"])
    assert net.gateway(1).evaluate(net.channel, "sagafacts", "GetRecord", [key])


def test_client_without_certificate_is_refused(real_sagafacts_net: RealLedgerNet) -> None:
    net = real_sagafacts_net
    profile = load_connection_profile(net.profile(1))
    identity = SigningIdentity.from_msp_dir(profile.msp_id, net.msp_dir(1))
    with GatewayClient.connect(profile.endpoint(), identity) as client, pytest.raises(EndorseError):
        client.prepare(net.channel, "sagafacts", "GetRecord", ["x"], timeout=5)


def _env(net: RealLedgerNet, **more: str) -> dict[str, str]:
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


def test_ping_a_peer_that_requires_client_certificates(real_sagafacts_net: RealLedgerNet) -> None:
    # organizations/peerOrganizations/org1.example.com/users/User1@org1.example.com/tls/
    cert, key = real_sagafacts_net.network.client_tls(1)
    assert cert.name == "client.crt" and key.name == "client.key"
    with_pair = _env(
        real_sagafacts_net, SAGA_FABRIC_TLS_CERT=str(cert), SAGA_FABRIC_TLS_KEY=str(key)
    )

    answered = json.loads(_ping(with_pair, "--json").stdout)
    assert answered["mutual_tls"] is True
    assert answered["peer"] == "peer0.org1.example.com"
    assert answered["msp_id"] == "Org1MSP" and answered["height"] >= 1
    assert "(mutual TLS) answered" in _ping(with_pair).stdout

    # Without the pair the Go peer ends the handshake with a "certificate required"
    # alert, which gRPC reports as UNAVAILABLE ... TSI_DATA_CORRUPTED.
    refused = _ping(_env(real_sagafacts_net), "--timeout", "10", code=1)
    assert "UNAVAILABLE" in refused.output and "TSI_DATA_CORRUPTED" in refused.output
    assert "the peer may require a client TLS certificate" in refused.output
    assert "set SAGA_FABRIC_TLS_CERT and SAGA_FABRIC_TLS_KEY" in refused.output
