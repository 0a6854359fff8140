"""Crypto material (cryptogen) and connection profiles, laid out as the devnet and
Fabric's test network lay them out:

    DIR/organizations/ordererOrganizations/example.com/orderers/orderer0.example.com/{msp,tls}
    DIR/organizations/peerOrganizations/org1.example.com/peers/peer0.org1.example.com/{msp,tls}
    DIR/organizations/peerOrganizations/org1.example.com/users/User1@org1.example.com/{msp,tls}
    DIR/organizations/peerOrganizations/org1.example.com/connection-org1.json
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from saga_devnet.profiles import profile_document
from saga_fabricnet.release import FabricRelease

ORDERER_DOMAIN = "example.com"
ORDERER_MSP = "OrdererMSP"
# Every node listens on 127.0.0.1, and peers and orderers dial each other by the
# addresses in the channel config, so their TLS certificates must name that address.
LOCAL_SANS = ["localhost", "127.0.0.1"]


@dataclass(frozen=True)
class Org:
    index: int

    @property
    def name(self) -> str:
        return f"Org{self.index}"

    @property
    def msp_id(self) -> str:
        return f"Org{self.index}MSP"

    @property
    def domain(self) -> str:
        return f"org{self.index}.example.com"

    @property
    def peer(self) -> str:
        return self.peer_host(0)

    def peer_host(self, n: int = 0) -> str:
        return f"peer{n}.{self.domain}"


@dataclass(frozen=True)
class Layout:
    """Paths inside a network's folder."""

    root: Path

    @property
    def organizations(self) -> Path:
        return self.root / "organizations"

    @property
    def orderer_org(self) -> Path:
        return self.organizations / "ordererOrganizations" / ORDERER_DOMAIN

    def orderer_host(self, n: int) -> str:
        return f"orderer{n}.{ORDERER_DOMAIN}"

    def orderer_dir(self, n: int) -> Path:
        return self.orderer_org / "orderers" / self.orderer_host(n)

    @property
    def orderer_tls_ca(self) -> Path:
        return self.orderer_org / "tlsca" / f"tlsca.{ORDERER_DOMAIN}-cert.pem"

    @property
    def orderer_admin(self) -> Path:
        return self.orderer_org / "users" / f"Admin@{ORDERER_DOMAIN}"

    def org_dir(self, org: Org) -> Path:
        return self.organizations / "peerOrganizations" / org.domain

    def peer_dir(self, org: Org, n: int = 0) -> Path:
        return self.org_dir(org) / "peers" / org.peer_host(n)

    def org_tls_ca(self, org: Org) -> Path:
        return self.org_dir(org) / "tlsca" / f"tlsca.{org.domain}-cert.pem"

    def user_dir(self, org: Org, user: str = "User1") -> Path:
        return self.org_dir(org) / "users" / f"{user}@{org.domain}"

    def profile(self, org: Org) -> Path:
        return self.org_dir(org) / f"connection-org{org.index}.json"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def channel_block(self) -> Path:
        return self.root / "channel-artifacts" / "channel.block"

    @property
    def builder(self) -> Path:
        return self.root / "builder"

    @property
    def chaincode_package(self) -> Path:
        return self.root / "chaincode" / "sagafacts.tar.gz"


def crypto_config(
    orderers: int, orgs: list[Org], peer_counts: dict[int, int] | None = None
) -> dict[str, Any]:
    counts = peer_counts or {}
    return {
        "OrdererOrgs": [
            {
                "Name": "Orderer",
                "Domain": ORDERER_DOMAIN,
                "EnableNodeOUs": True,
                "Specs": [{"Hostname": f"orderer{n}", "SANS": LOCAL_SANS} for n in range(orderers)],
            }
        ],
        "PeerOrgs": [
            {
                "Name": org.name,
                "Domain": org.domain,
                # NodeOUs give the client/peer/admin roles the channel policies name;
                # cryptogen also writes every user's tls/client.{crt,key} for mutual TLS.
                "EnableNodeOUs": True,
                "Template": {"Count": counts.get(org.index, 1), "SANS": LOCAL_SANS},
                "Users": {"Count": 1},
            }
            for org in orgs
        ],
    }


def generate(
    release: FabricRelease,
    layout: Layout,
    orderers: int,
    orgs: list[Org],
    peer_counts: dict[int, int] | None = None,
) -> None:
    layout.config.mkdir(parents=True, exist_ok=True)
    spec = layout.config / "crypto-config.yaml"
    spec.write_text(yaml.safe_dump(crypto_config(orderers, orgs, peer_counts), sort_keys=False))
    result = subprocess.run(
        [
            str(release.binary("cryptogen")),
            "generate",
            f"--config={spec}",
            f"--output={layout.organizations}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cryptogen failed: {result.stderr or result.stdout}")


def connection_profile(
    layout: Layout, org: Org, peer_port: int, more_peer_ports: list[int] | None = None
) -> dict[str, Any]:
    """The devnet's ``connection-orgN.json`` document, for this network's peers: peer0
    first, then peer1.. (a gateway client moves down the org's list when its peer is
    unreachable)."""
    profile = profile_document(
        name=f"fabricnet-{org.name.lower()}",
        org_name=org.name,
        msp_id=org.msp_id,
        domain=org.domain,
        peer_host=org.peer,
        peer_port=peer_port,
        tls_pem=layout.org_tls_ca(org).read_text(),
        ca_pem=(layout.org_dir(org) / "ca" / f"ca.{org.domain}-cert.pem").read_text(),
    )
    first = profile["peers"][org.peer]
    for n, port in enumerate(more_peer_ports or (), start=1):
        host = org.peer_host(n)
        profile["organizations"][org.name]["peers"].append(host)
        profile["peers"][host] = {
            **first,
            "url": f"grpcs://localhost:{port}",
            "grpcOptions": {"ssl-target-name-override": host, "hostnameOverride": host},
        }
    return profile


def write_profiles(
    layout: Layout,
    orgs: list[Org],
    peer_ports: dict[int, int],
    more_peer_ports: dict[int, list[int]] | None = None,
) -> None:
    for org in orgs:
        more = (more_peer_ports or {}).get(org.index)
        profile = connection_profile(layout, org, peer_ports[org.index], more)
        layout.profile(org).write_text(json.dumps(profile, indent=4) + "\n")
