"""A throwaway local ledger for `saga demo --ledger`: the devnet and the sagafacts
chaincode as child processes, on free ports, with state in a directory of the
demo's own. It yields the SAGA_FABRIC_* settings that point at it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from saga_devnet.chaincode_launcher import chaincode_running, free_port, stop, wait_listening

CHAINCODE_ID = "sagafacts_1.0:demo"


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _seed(
    admin: int, orderer: int, org1: int, org2: int, cc_port: int, batch: float
) -> dict[str, Any]:
    return {
        "batch_timeout": batch,
        "admin_port": admin,
        "orderer": {
            "name": "Orderer",
            "msp_id": "OrdererMSP",
            "domain": "example.com",
            "port": orderer,
        },
        "orgs": [
            {"name": "Org1", "msp_id": "Org1MSP", "domain": "org1.example.com", "port": org1},
            {"name": "Org2", "msp_id": "Org2MSP", "domain": "org2.example.com", "port": org2},
        ],
        "chaincodes": {
            "sagafacts": {
                "address": f"127.0.0.1:{cc_port}",
                "package_id": CHAINCODE_ID,
                "policy": "MAJORITY Endorsement",
            }
        },
    }


@contextmanager
def local_ledger(workdir: Path, *, batch_timeout: float = 1.0) -> Iterator[dict[str, str]]:
    """Start (or restart, keeping its ledger) the demo's devnet and chaincode."""
    devnet_dir = workdir / "devnet"
    devnet_dir.mkdir(parents=True, exist_ok=True)
    existing = devnet_dir / "devnet.yaml"
    seed = workdir / "devnet-seed.yaml"
    if not existing.exists():
        admin, orderer, org1, org2, cc_port = (free_port() for _ in range(5))
        seed.write_text(yaml.safe_dump(_seed(admin, orderer, org1, org2, cc_port, batch_timeout)))
    # The devnet keeps the ports of its first start (its profiles name them).
    config = yaml.safe_load((existing if existing.exists() else seed).read_text())
    cc_address = config["chaincodes"]["sagafacts"]["address"]
    org1 = int(config["orgs"][0]["port"])
    with ExitStack() as stack:
        stack.enter_context(
            chaincode_running(cc_address, CHAINCODE_ID, workdir / "chaincode.log", new_session=True)
        )
        dn_log = workdir / "devnet.log"
        devnet = _spawn(
            ["-m", "saga_devnet", "up", "--dir", str(devnet_dir), "--config", str(seed)], dn_log
        )
        stack.callback(stop, devnet)
        wait_listening(devnet, org1, "the devnet", dn_log)
        domain = config["orgs"][0]["domain"]
        org_dir = devnet_dir / "organizations" / "peerOrganizations" / domain
        yield {
            "fabric_profile": str(org_dir / "connection-org1.json"),
            "fabric_msp_dir": str(org_dir / "users" / f"User1@{domain}" / "msp"),
        }
