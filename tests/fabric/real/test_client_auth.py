"""client_auth_required: the peers demand a client TLS certificate; User1's
cryptogen tls/client.crt passes, a client without one is refused at the handshake."""

from __future__ import annotations

import uuid

import pytest

from saga.fabric import EndorseError, GatewayClient, SigningIdentity, load_connection_profile
from tests.support.fabricnet import RealLedgerNet, real_sagafacts_net_fixture  # noqa: F401

pytestmark = pytest.mark.parametrize(
    "real_sagafacts_net", [{"client_auth_required": True}], indirect=True
)


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
