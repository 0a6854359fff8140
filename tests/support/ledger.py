"""A real devnet running the real sagafacts chaincode, for chain step integration tests.

    from tests.support.ledger import LedgerNet  # fixture: a tests/conftest.py plugin

    def test_x(sagafacts_net: LedgerNet):
        client = sagafacts_net.gateway()       # GatewayClient as User1@org1, the product's adapter
        sagafacts_net.devnet.set_faults(drop_submit_reply=1)

The chaincode runs as `python -m sagafacts_chaincode` (chaincode-as-a-service) and the
devnet dials it; endorsement needs both orgs, as on a MAJORITY-policy network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from saga.adapters.fabric import GatewayClient, SigningIdentity, load_connection_profile
from saga_devnet.chaincode_launcher import chaincode_running
from tests.support.devnet import Devnet
from tests.support.ports import free_port

CHAINCODE = "sagafacts"
CHAINCODE_ID = "sagafacts_1.0:devnet"


@dataclass
class LedgerNet:
    devnet: Devnet
    chaincode_address: str
    _clients: list[GatewayClient] = field(default_factory=list)

    @property
    def channel(self) -> str:
        return str(self.devnet.config["channel"])

    def profile(self, org: int = 1) -> Path:
        """The org's connection profile (as RealLedgerNet.profile: one surface for both)."""
        return self.devnet.profile(org)

    def msp_dir(self, org: int = 1) -> Path:
        domain = self.devnet.org(org)["domain"]
        return self.devnet.org_dir(org) / "users" / f"User1@{domain}" / "msp"

    def gateway(self, org: int = 1) -> GatewayClient:
        profile = load_connection_profile(self.devnet.profile(org))
        identity = SigningIdentity.from_msp_dir(profile.msp_id, self.msp_dir(org))
        client = GatewayClient.connect(profile.endpoint(), identity)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()


@pytest.fixture(scope="module", name="sagafacts_net")
def sagafacts_net_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerNet]:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("chaincode") / "chaincode.log"
    with chaincode_running(address, CHAINCODE_ID, log):
        net = Devnet(
            tmp_path_factory.mktemp("devnet"),
            {
                "batch_timeout": 0.3,
                "chaincodes": {
                    CHAINCODE: {
                        "address": address,
                        "package_id": CHAINCODE_ID,
                        "policy": "MAJORITY Endorsement",
                    }
                },
            },
        )
        ledger = LedgerNet(net, address)
        try:
            net.start()
            yield ledger
        finally:
            ledger.close()
            try:
                net.stop()
            except Exception:
                net.kill()
