"""Common connection profiles (`connection-org1.json`), shaped like Fabric test-network's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saga_devnet.config import DevnetConfig, OrgConfig
from saga_devnet.cryptogen import org_root


def profile_name(cfg: DevnetConfig, org: OrgConfig) -> str:
    index = cfg.orgs.index(org) + 1
    return f"connection-org{index}"


def profile_document(
    *,
    name: str,
    org_name: str,
    msp_id: str,
    domain: str,
    peer_host: str,
    peer_port: int,
    tls_pem: str,
    ca_pem: str,
) -> dict[str, Any]:
    """A one-peer connection profile in Fabric test-network's shape (also used by the
    real-network launcher, saga_fabricnet, so both ledgers write the same document)."""
    # No Fabric CA runs; the entry keeps the test-network shape so that tools reading
    # `certificateAuthorities` still find the org's CA certificate.
    ca_name = f"ca.{domain}"
    return {
        "name": name,
        "version": "1.0.0",
        "client": {
            "organization": org_name,
            "connection": {"timeout": {"peer": {"endorser": "300"}}},
        },
        "organizations": {
            org_name: {
                "mspid": msp_id,
                "peers": [peer_host],
                "certificateAuthorities": [ca_name],
            }
        },
        "peers": {
            peer_host: {
                "url": f"grpcs://localhost:{peer_port}",
                "tlsCACerts": {"pem": tls_pem},
                "grpcOptions": {
                    "ssl-target-name-override": peer_host,
                    "hostnameOverride": peer_host,
                },
            }
        },
        "certificateAuthorities": {
            ca_name: {
                "url": "https://localhost:7054",
                "caName": f"ca-{org_name.lower()}",
                "tlsCACerts": {"pem": [ca_pem]},
                "httpOptions": {"verify": False},
            }
        },
    }


def build_profile(directory: Path, cfg: DevnetConfig, org: OrgConfig) -> dict[str, Any]:
    root = org_root(directory, org)
    return profile_document(
        name=f"devnet-{org.name.lower()}",
        org_name=org.name,
        msp_id=org.msp_id,
        domain=org.domain,
        peer_host=org.peer_host,
        peer_port=org.port,
        tls_pem=(root / "tlsca" / f"tlsca.{org.domain}-cert.pem").read_text(),
        ca_pem=(root / "ca" / f"ca.{org.domain}-cert.pem").read_text(),
    )


def write_profiles(directory: Path, cfg: DevnetConfig) -> list[Path]:
    """Write connection-orgN.json into each org's folder, where test-network puts it."""
    written = []
    for org in cfg.orgs:
        path = org_root(directory, org) / f"{profile_name(cfg, org)}.json"
        path.write_text(json.dumps(build_profile(directory, cfg, org), indent=4) + "\n")
        written.append(path)
    return written
