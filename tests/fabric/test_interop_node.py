"""Interoperability: the official Node.js Fabric Gateway client and the product's Python
client on the same ledger, on the devnet and on REAL Fabric 2.5.16 and 3.1.5.

``tests/fabric/interop/interop.mjs`` uses ``@hyperledger/fabric-gateway`` unchanged and
only the connection profile and MSP folders the network wrote. Each ledger runs the real
sagafacts chaincode as a service under a two-org endorsement policy: the devnet over the
shim, the real networks (``saga_fabricnet``: official peer and orderer binaries, Raft)
through the chaincode lifecycle. One test body, parametrized over the ledger and over
TLS / mutual TLS:

- the Python client (``saga.adapters.fabric.GatewayClient``) records a payment; the Node client
  reads it (``--read-key``) and sees the same record;
- the Node client evaluates, submits, reads commit status and qscc, resubmits its
  envelope, is refused a second transaction for its key; the Python client then reads
  the Node client's record and commit status, and is refused a second one too.

Only the devnet has a chaincode that emits events (``devkv``), so the event check runs
there alone. The real networks' binaries come from ``.fabric/`` (or FABRIC_BIN /
FABRIC_31_BIN): a missing binary FAILS, never skips.

Needs ``node`` (>= 20.9) and ``npm``; ``npm ci`` runs once when node_modules is missing
or older than package-lock.json. In CI a missing Node.js is a failure, not a skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from saga.adapters.fabric import (
    EndorseError,
    GatewayClient,
    SigningIdentity,
    load_connection_profile,
)
from saga.ports.ledger import VALID
from saga_fabricnet import NetworkOptions
from tests.support.fabricnet import (
    TEST_BATCH_TIMEOUT,
    fabric_31_release,
    fabric_release,
    real_network,
)
from tests.support.shim import chaincode_process

INTEROP = Path(__file__).resolve().parent / "interop"
CC_NAME = "sagafacts"
CC_ID = "sagafacts_1.0:interop"
TWO_ORGS = "AND('Org1MSP.peer','Org2MSP.peer')"
LEDGERS = ("devnet", "fabric-2.5.16", "fabric-3.1.5")


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


def _devnet_chaincodes(address: str) -> dict[str, Any]:
    return {
        CC_NAME: {"address": address, "package_id": CC_ID, "policy": TWO_ORGS},
        "devkv": {"builtin": "kv", "policy": "MAJORITY Endorsement"},
    }


@dataclass
class Ledger:
    """What both clients need of a network: files it wrote, and its logs for a failure."""

    name: str
    profile: Path
    user_dir: Path  # .../users/User1@org1.example.com (msp/ and tls/)
    channel: str
    mutual_tls: bool
    events_chaincode: str | None
    log_tail: Callable[[], str]

    def python_client(self) -> GatewayClient:
        """The product's client as User1@org1, from the same profile and MSP folder."""
        loaded = load_connection_profile(self.profile)
        endpoint = loaded.endpoint()
        if self.mutual_tls:
            tls = self.user_dir / "tls"
            endpoint = endpoint.with_client_tls(
                (tls / "client.crt").read_bytes(), (tls / "client.key").read_bytes()
            )
        identity = SigningIdentity.from_msp_dir(loaded.msp_id, self.user_dir / "msp")
        return GatewayClient.connect(endpoint, identity)


def _real_ledger(stack: ExitStack, tmp: Path, name: str, mutual_tls: bool) -> Ledger:
    release = fabric_release() if name == "fabric-2.5.16" else fabric_31_release()
    options = NetworkOptions(batch_timeout=TEST_BATCH_TIMEOUT, client_auth_required=mutual_tls)
    net = stack.enter_context(real_network(tmp, release, options)).network
    assert net.state.version.startswith(name.removeprefix("fabric-")), net.state.version

    def log_tail() -> str:
        parts = []
        for member in ("peer0.org1", "peer0.org2", "chaincode"):
            lines = net.log(member).read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {member} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    return Ledger(
        name,
        net.profile(1),
        net.msp_dir(1).parent,
        net.channel,
        mutual_tls,
        None,  # sagafacts emits no chaincode events, and it is the only chaincode here
        log_tail,
    )


@pytest.fixture(
    params=[(name, mtls) for name in LEDGERS for mtls in (False, True)],
    ids=[f"{name}-{tls}" for name in LEDGERS for tls in ("tls", "mutual-tls")],
)
def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ledger]:
    name, mutual_tls = request.param
    with ExitStack() as stack:
        if name == "devnet":
            # Module-scoped devnets: cheap, so both stay up until the module ends.
            address = request.getfixturevalue("chaincode_address")
            factory = request.getfixturevalue("module_devnet_factory")
            net = factory(chaincodes=_devnet_chaincodes(address), mutual_tls=mutual_tls)
            user = net.org_dir(1) / "users" / f"User1@{net.org(1)['domain']}"
            yield Ledger(
                name, net.profile(1), user, net.config["channel"], mutual_tls, "devkv", net.log_tail
            )
        else:
            # A real network per test, down before the next one starts: six processes each.
            yield _real_ledger(stack, tmp_path_factory.mktemp(name), name, mutual_tls)


def _node(
    ledger: Ledger, *, tls_client: bool, read_key: str | None = None
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    cmd = [_tool("node"), "interop.mjs", "--profile", str(ledger.profile)]
    cmd += ["--msp", str(ledger.user_dir / "msp"), "--channel", ledger.channel]
    cmd += ["--chaincode", CC_NAME]
    if ledger.events_chaincode:
        cmd += ["--events-chaincode", ledger.events_chaincode]
    if tls_client:
        cmd += ["--tls-client", str(ledger.user_dir / "tls")]
    if read_key:
        cmd += ["--read-key", read_key]
    done = subprocess.run(cmd, cwd=INTEROP, capture_output=True, text=True, timeout=180)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report from interop.mjs:\n{done.stdout}\n{done.stderr}\n{ledger.log_tail()}"
    return json.loads(lines[-1]), done


def test_node_and_python_gateway_clients_share_records(node_modules: Path, ledger: Ledger) -> None:
    python = ledger.python_client()
    try:
        # The Python client writes first; the Node client must read exactly that record.
        py_key = f"interop-py/{uuid.uuid4()}"
        py_args = [py_key, "order-from-python", "990", "EUR", "customer-py"]
        py_record = json.loads(
            python.submit_transaction(ledger.channel, CC_NAME, "RecordPayment", py_args)
        )
        assert py_record["key"] == py_key and py_record["recorded_by"] == "Org1MSP"

        report, done = _node(ledger, tls_client=ledger.mutual_tls, read_key=py_key)
        assert report["ok"], (
            f"{report.get('error')}\npassed: {report['checks']}\n{ledger.log_tail()}"
        )
        assert done.returncode == 0, done.stderr
        assert report["read"] == py_record
        assert report["refusal"].count("ALREADY_RECORDED:") == 1
        assert len(report["txid"]) == 64 and report["block"] >= 1
        # 12 checks of its own, one for --read-key, two for the events chaincode.
        assert len(report["checks"]) == 13 + (2 if ledger.events_chaincode else 0)
        if ledger.events_chaincode:
            assert report["event"] == "create"

        # What the Node client committed, the Python client reads the same.
        node_record = json.loads(
            python.evaluate(ledger.channel, CC_NAME, "GetRecord", [report["key"]])
        )
        assert node_record == report["record"]
        assert node_record["txid"] == report["txid"]
        assert node_record["data"] == {
            "order_id": "order-interop",
            "amount_cents": 1250,
            "currency": "EUR",
            "customer_id": "customer-1",
        }
        status = python.commit_status(ledger.channel, report["txid"], timeout=30.0)
        assert status.code == VALID and status.block_number == report["block"]
        # And its own second transaction for the Node client's key is refused too.
        with pytest.raises(EndorseError, match="ALREADY_RECORDED"):
            python.submit_transaction(
                ledger.channel,
                CC_NAME,
                "RecordPayment",
                [report["key"], "order-interop", "1250", "EUR", "customer-1"],
            )
    finally:
        python.close()

    if ledger.mutual_tls:
        # Without its client certificate the same client gets nowhere.
        anonymous, done = _node(ledger, tls_client=False)
        assert not anonymous["ok"] and anonymous["checks"] == [], anonymous
        assert done.returncode != 0
