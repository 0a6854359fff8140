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


def build_profile(directory: Path, cfg: DevnetConfig, org: OrgConfig) -> dict[str, Any]:
    root = org_root(directory, org)
    tls_pem = (root / "tlsca" / f"tlsca.{org.domain}-cert.pem").read_text()
    ca_pem = (root / "ca" / f"ca.{org.domain}-cert.pem").read_text()
    peer = org.peer_host
    # Fabric CA is not part of the devnet; the entry keeps the test-network shape so that
    # tools reading `certificateAuthorities` still find the org's CA certificate.
    ca_name = f"ca.{org.domain}"
    return {
        "name": f"devnet-{org.name.lower()}",
        "version": "1.0.0",
        "client": {
            "organization": org.name,
            "connection": {"timeout": {"peer": {"endorser": "300"}}},
        },
        "organizations": {
            org.name: {
                "mspid": org.msp_id,
                "peers": [peer],
                "certificateAuthorities": [ca_name],
            }
        },
        "peers": {
            peer: {
                "url": f"grpcs://localhost:{org.port}",
                "tlsCACerts": {"pem": tls_pem},
                "grpcOptions": {
                    "ssl-target-name-override": peer,
                    "hostnameOverride": peer,
                },
            }
        },
        "certificateAuthorities": {
            ca_name: {
                "url": "https://localhost:7054",
                "caName": f"ca-{org.name.lower()}",
                "tlsCACerts": {"pem": [ca_pem]},
                "httpOptions": {"verify": False},
            }
        },
    }


def write_profiles(directory: Path, cfg: DevnetConfig) -> list[Path]:
    """Write connection-orgN.json into each org's folder, where test-network puts it."""
    written = []
    for org in cfg.orgs:
        path = org_root(directory, org) / f"{profile_name(cfg, org)}.json"
        path.write_text(json.dumps(build_profile(directory, cfg, org), indent=4) + "\n")
        written.append(path)
    return written
