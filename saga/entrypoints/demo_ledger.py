"""The ledger of `saga demo --ledger`.

Either a network that already runs (a real Fabric network started with `python -m
saga_fabricnet up --dir DIR`, or any network the SAGA_FABRIC_* settings name), checked
to answer before the demo starts; or a throwaway local ledger: the devnet and the
sagafacts chaincode as child processes, on free ports, with state in a directory of
the demo's own, yielding the SAGA_FABRIC_* settings that point at it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from saga.config import ConfigError, Settings
from saga.core.errors import SagaError

CHAINCODE_ID = "sagafacts_1.0:demo"
# The launcher's state file: its presence is what makes a folder a launcher network.
_FABRICNET_STATE = "fabricnet.json"
# Read-only GetRecord of a key no saga step derives (theirs are saga:step:purpose).
_PROBE_KEY = "saga-demo-ledger-probe"


class DemoLedgerError(SagaError, RuntimeError):
    """The ledger the demo was pointed at cannot be used; the message says what to do."""


_DEVTOOLS = (
    "the devnet tools are not installed (development tooling, not the product): "
    "pip install -e ./chaincode -e ./tools from the repository"
)


def fabric_network_settings(settings: Settings, directory: Path) -> Settings:
    """`settings` pointed at a network the launcher (`python -m saga_fabricnet up --dir
    DIR`) made in `directory`: org1's connection profile, User1's MSP folder, the
    channel, and User1's TLS client pair when the peers require client certificates.
    Every member must be running."""
    if not (directory / _FABRICNET_STATE).is_file():
        raise DemoLedgerError(
            f"{directory} holds no network of the launcher (no {_FABRICNET_STATE}): start one "
            f"with `python -m saga_fabricnet up --dir {directory} --fabric-bin <release>/bin`, "
            "or give --profile and --msp-dir of another network"
        )
    # Development tooling, not the product: imported only when asked for.
    try:
        from saga_fabricnet import FabricNetwork
    except ImportError as exc:
        raise DemoLedgerError(f"--fabric-dir needs saga_fabricnet: {_DEVTOOLS}") from exc

    net = FabricNetwork.attach(directory)
    down = [m for m in net.members if not net.running(m)]
    if down:
        raise DemoLedgerError(
            f"the Fabric network in {directory} is not running ({', '.join(down)} down): "
            f"start it with `python -m saga_fabricnet up --dir {directory}` (in another "
            "terminal or with &), then run the demo again"
        )
    cert, key = net.client_tls(1) if net.options.client_auth_required else ("", "")
    chosen = replace(
        settings,
        fabric_profile=str(net.profile(1)),
        fabric_msp_dir=str(net.msp_dir(1)),
        # The profile's client org and first peer: no SAGA_FABRIC_MSP_ID/PEER left over.
        fabric_msp_id="",
        fabric_peer="",
        fabric_channel=net.channel,
        fabric_tls_cert=str(cert),
        fabric_tls_key=str(key),
    )
    chosen.check()
    return chosen


def check_ledger(settings: Settings) -> str:
    """Ask the configured gateway for the channel's height and the sagafacts chaincode
    for a probe record, as the workers would; a DemoLedgerError if either does not
    answer. A demo against a ledger that is away would otherwise wait out the chain
    steps' outage budget (SAGA_CHAIN_OUTAGE_BUDGET) before saying anything."""
    from saga.adapters.fabric import GatewayError
    from saga.bootstrap import Container

    where = f"the ledger of SAGA_FABRIC_PROFILE={settings.fabric_profile}"
    try:
        client = Container(settings).query_client()
    except (OSError, ValueError, ConfigError) as exc:
        raise DemoLedgerError(
            f"{where} cannot be used: {exc}; check SAGA_FABRIC_PROFILE, SAGA_FABRIC_MSP_DIR "
            "(and SAGA_FABRIC_TLS_CERT/KEY), or the options --fabric-dir, --profile, --msp-dir"
        ) from None
    channel = settings.fabric_channel
    try:
        with client:
            client.evaluate(channel, "qscc", "GetChainInfo", [channel], timeout=10.0)
            client.evaluate(channel, "sagafacts", "GetRecord", [_PROBE_KEY], timeout=10.0)
    except GatewayError as exc:
        raise DemoLedgerError(
            f"{where} did not answer on channel {channel}: {exc}. Is the network up, is "
            "sagafacts deployed and running? `saga ledger ping --chaincode sagafacts` tells "
            "which part is missing"
        ) from None
    return f"{where}, channel {channel}"


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
    # Development tooling (tools/), not the product: imported only when asked for.
    try:
        from saga_devnet.chaincode_launcher import (
            chaincode_running,
            free_port,
            stop,
            wait_listening,
        )
    except ImportError as exc:
        raise DemoLedgerError(f"--ledger runs the devnet and the chaincode: {_DEVTOOLS}") from exc
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
