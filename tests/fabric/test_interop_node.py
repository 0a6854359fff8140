"""Interoperability: the official Node.js Fabric Gateway client against the devnet.

``tests/fabric/interop/interop.mjs`` uses ``@hyperledger/fabric-gateway`` unchanged and
only the connection profile and MSP folders the devnet wrote. The devnet runs the real
sagafacts chaincode as a service over the shim, under a two-org endorsement policy.

Needs ``node`` (>= 20.9) and ``npm``; ``npm ci`` runs once when node_modules is missing
or older than package-lock.json. In CI a missing Node.js is a failure, not a skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fabric.test_shim_harness import chaincode_process

INTEROP = Path(__file__).resolve().parent / "interop"
CC_NAME = "sagafacts"
CC_ID = "sagafacts_1.0:interop"
TWO_ORGS = "AND('Org1MSP.peer','Org2MSP.peer')"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: install Node.js >= 20.9 to run the interop test")
    return path


@pytest.fixture(scope="module")
def node_modules() -> Path:
    npm = _tool("npm")
    _tool("node")
    modules = INTEROP / "node_modules"
    lock = INTEROP / "package-lock.json"
    marker = modules / ".package-lock.json"  # npm writes it on every install
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return modules


@pytest.fixture(scope="module")
def chaincode_address() -> Iterator[str]:
    with chaincode_process(cc_id=CC_ID) as (_, address):
        yield address


def _chaincodes(address: str) -> dict[str, Any]:
    return {
        CC_NAME: {"address": address, "package_id": CC_ID, "policy": TWO_ORGS},
        "devkv": {"builtin": "kv", "policy": "MAJORITY Endorsement"},
    }


def _node(net: Any, *, tls_client: bool) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    user = net.org_dir(1) / "users" / f"User1@{net.org(1)['domain']}"
    cmd = [_tool("node"), "interop.mjs", "--profile", str(net.profile(1))]
    cmd += ["--msp", str(user / "msp"), "--channel", net.config["channel"]]
    cmd += ["--chaincode", CC_NAME, "--events-chaincode", "devkv"]
    if tls_client:
        cmd += ["--tls-client", str(user / "tls")]
    done = subprocess.run(cmd, cwd=INTEROP, capture_output=True, text=True, timeout=180)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report from interop.mjs:\n{done.stdout}\n{done.stderr}\n{net.log_tail()}"
    return json.loads(lines[-1]), done


@pytest.mark.parametrize("mutual_tls", [False, True], ids=["tls", "mutual-tls"])
def test_node_gateway_client_evaluates_submits_and_reads_commit_status(
    node_modules: Path,
    chaincode_address: str,
    module_devnet_factory: Callable[..., Any],
    mutual_tls: bool,
) -> None:
    net = module_devnet_factory(chaincodes=_chaincodes(chaincode_address), mutual_tls=mutual_tls)
    report, done = _node(net, tls_client=mutual_tls)
    assert report["ok"], f"{report.get('error')}\npassed: {report['checks']}\n{net.log_tail()}"
    assert done.returncode == 0, done.stderr
    assert report["refusal"].count("ALREADY_RECORDED:") == 1
    assert report["event"] == "create"
    assert len(report["txid"]) == 64 and report["block"] >= 1
    assert len(report["checks"]) == 14
    if mutual_tls:
        # Without its client certificate the same client gets nowhere.
        anonymous, done = _node(net, tls_client=False)
        assert not anonymous["ok"] and anonymous["checks"] == [], anonymous
        assert done.returncode != 0
