"""The devnet's blocks next to Fabric's own tools: `configtxlator proto_decode` reads block 0 and
block 1, and block 0's channel config is field for field what `configtxgen` makes from the same
crypto material and profile.

The binaries come from FABRIC_BIN (default `.fabric/fabric-2.5.16/bin` under the repo root,
which scripts/test.sh installs). A missing binary fails these tests: they exist to compare
with real Fabric, and a skip would hide that the comparison never ran.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from saga_devnet.protos import common_pb2, transaction_pb2

REPO = Path(__file__).resolve().parents[2]
CHANNEL = "mychannel"


def fabric_bin() -> Path:
    folder = Path(os.environ.get("FABRIC_BIN", ".fabric/fabric-2.5.16/bin"))
    folder = folder if folder.is_absolute() else REPO / folder
    for tool in ("configtxlator", "configtxgen"):
        if not (folder / tool).is_file():
            pytest.fail(
                f"{folder / tool} not found: set FABRIC_BIN to the folder of Fabric 2.5's "
                "binaries (scripts/test.sh installs them under .fabric/)"
            )
    return folder


def decode_block(raw: bytes, tmp: Path) -> dict[str, Any]:
    path = tmp / f"block-{uuid.uuid4().hex[:8]}.pb"
    path.write_bytes(raw)
    out = subprocess.run(
        [str(fabric_bin() / "configtxlator"), "proto_decode", "--type", "common.Block"],
        input=raw,
        capture_output=True,
        check=True,
    )
    decoded: dict[str, Any] = json.loads(out.stdout)
    return decoded


def _configtx_yaml(net: Any) -> str:
    """The devnet's profile (tools/saga_devnet/channel_config.py), in configtxgen's words."""
    orgs_dir = net.dir / "organizations"
    orderer_tls = orgs_dir / "ordererOrganizations/example.com/orderers/orderer.example.com/tls"
    orgs = ""
    for n in (1, 2):
        org = net.org(n)
        msp = org["msp_id"]
        orgs += f"""
  - &{msp}
    Name: {msp}
    ID: {msp}
    MSPDir: {net.org_dir(n) / "msp"}
    Policies:
      Readers: {{Type: Signature, Rule: "OR('{msp}.admin', '{msp}.peer', '{msp}.client')"}}
      Writers: {{Type: Signature, Rule: "OR('{msp}.admin', '{msp}.client')"}}
      Admins: {{Type: Signature, Rule: "OR('{msp}.admin')"}}
      Endorsement: {{Type: Signature, Rule: "OR('{msp}.peer')"}}
    AnchorPeers:
      - {{Host: peer0.{org["domain"]}, Port: {org["port"]}}}
"""
    batch_ms = round(net.config["batch_timeout"] * 1000)

    def implicit(indent: int, *extra: tuple[str, str]) -> str:
        rules = [("Readers", "ANY Readers"), ("Writers", "ANY Writers")]
        rules += [("Admins", "MAJORITY Admins"), *extra]
        pad = " " * indent
        return "\n".join(
            f'{pad}{name}: {{Type: ImplicitMeta, Rule: "{rule}"}}' for name, rule in rules
        )

    endorsement = ("Endorsement", "MAJORITY Endorsement")
    return f"""
Organizations:
  - &OrdererOrg
    Name: OrdererOrg
    ID: OrdererMSP
    MSPDir: {orgs_dir / "ordererOrganizations/example.com/msp"}
    Policies:
      Readers: {{Type: Signature, Rule: "OR('OrdererMSP.member')"}}
      Writers: {{Type: Signature, Rule: "OR('OrdererMSP.member')"}}
      Admins: {{Type: Signature, Rule: "OR('OrdererMSP.admin')"}}
    OrdererEndpoints:
      - 127.0.0.1:7050
{orgs}
Profiles:
  DevnetChannel:
    Policies:
{implicit(6)}
    Capabilities: {{V2_0: true}}
    Orderer:
      OrdererType: etcdraft
      EtcdRaft:
        Consenters:
          - Host: 127.0.0.1
            Port: 7050
            ClientTLSCert: {orderer_tls / "server.crt"}
            ServerTLSCert: {orderer_tls / "server.crt"}
      BatchTimeout: {batch_ms}ms
      BatchSize:
        MaxMessageCount: {net.config["max_message_count"]}
        AbsoluteMaxBytes: 99 MB
        PreferredMaxBytes: 512 KB
      Organizations: [*OrdererOrg]
      Policies:
{implicit(8, ("BlockValidation", "ANY Writers"))}
      Capabilities: {{V2_0: true}}
    Application:
      Organizations: [*Org1MSP, *Org2MSP]
      Policies:
{implicit(8, ("LifecycleEndorsement", "MAJORITY Endorsement"), endorsement)}
      Capabilities: {{V2_5: true}}
"""


def configtxgen_block(net: Any, tmp: Path) -> dict[str, Any]:
    cfg_dir = tmp / "configtx"
    cfg_dir.mkdir(exist_ok=True)
    (cfg_dir / "configtx.yaml").write_text(_configtx_yaml(net))
    out = cfg_dir / "genesis.block"
    result = subprocess.run(
        [
            str(fabric_bin() / "configtxgen"),
            "-profile",
            "DevnetChannel",
            "-channelID",
            CHANNEL,
            "-outputBlock",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "FABRIC_CFG_PATH": str(cfg_dir)},
    )
    assert result.returncode == 0, result.stderr
    return decode_block(out.read_bytes(), tmp)


@pytest.fixture(scope="module")
def net(module_devnet_factory):
    return module_devnet_factory()


@pytest.fixture(scope="module")
def blocks(net, tmp_path_factory) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    gw = net.client(1)
    _txid, code, number = gw.submit_transaction("devkv", "put", f"k-{uuid.uuid4().hex[:8]}", "v")
    assert code == transaction_pb2.VALID and number == 1
    raw0 = gw.evaluate("qscc", "GetBlockByNumber", CHANNEL, "0").payload
    raw1 = gw.evaluate("qscc", "GetBlockByNumber", CHANNEL, "1").payload
    tmp = tmp_path_factory.mktemp("blocks")
    return decode_block(raw0, tmp), decode_block(raw1, tmp), raw0, raw1


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def test_block0_config_is_what_configtxgen_makes_from_the_same_material(
    net, blocks, tmp_path
) -> None:
    block0, _b1, _r0, _r1 = blocks
    real = configtxgen_block(net, tmp_path)
    ours_env, real_env = block0["data"]["data"][0], real["data"]["data"][0]
    assert ours_env["payload"]["data"] == real_env["payload"]["data"]  # the whole Config
    group = ours_env["payload"]["data"]["config"]["channel_group"]
    assert set(group["groups"]["Application"]["groups"]) == {"Org1MSP", "Org2MSP"}
    assert set(group["groups"]["Application"]["policies"]) == {
        "Readers",
        "Writers",
        "Admins",
        "Endorsement",
        "LifecycleEndorsement",
    }
    orderer = group["groups"]["Orderer"]
    assert orderer["groups"]["OrdererOrg"]["values"]["Endpoints"]["value"]["addresses"] == [
        "127.0.0.1:7050"
    ]
    assert orderer["values"]["BatchSize"]["value"]["max_message_count"] == 10
    assert orderer["values"]["BatchTimeout"]["value"]["timeout"] == "500ms"
    assert orderer["values"]["ConsensusType"]["value"]["type"] == "etcdraft"
    msp = group["groups"]["Application"]["groups"]["Org1MSP"]["values"]["MSP"]["value"]
    ca = (net.org_dir(1) / "msp" / "cacerts" / "ca.org1.example.com-cert.pem").read_bytes()
    assert _b64(msp["config"]["root_certs"][0]) == ca
    # The envelope and headers as configtxgen writes them (timestamp and nonce differ).
    ours_hdr, real_hdr = ours_env["payload"]["header"], real_env["payload"]["header"]
    for hdr in (ours_hdr, real_hdr):
        hdr["channel_header"].pop("timestamp")
        nonce = _b64(hdr["signature_header"].pop("nonce"))
        assert hdr["channel_header"].pop("tx_id") == hashlib.sha256(nonce).hexdigest()
    assert ours_hdr == real_hdr
    assert ours_hdr["channel_header"]["version"] == 1
    assert ours_hdr["channel_header"]["type"] == common_pb2.CONFIG
    assert ours_env["signature"] == real_env["signature"] is None


def test_block0_metadata_is_configtxgen_s_plus_the_peer_s_filter(net, blocks, tmp_path) -> None:
    block0, _b1, _r0, _r1 = blocks
    real = configtxgen_block(net, tmp_path)
    assert block0["header"]["number"] == real["header"]["number"] == "0"
    assert block0["header"]["previous_hash"] is None
    md, real_md = block0["metadata"]["metadata"], real["metadata"]["metadata"]
    assert md[common_pb2.SIGNATURES] == real_md[common_pb2.SIGNATURES]
    assert md[common_pb2.LAST_CONFIG] == real_md[common_pb2.LAST_CONFIG] == ""
    assert _b64(md[common_pb2.TRANSACTIONS_FILTER]) == b"\x00"  # cscc JoinChain adds it
    assert md[common_pb2.COMMIT_HASH] == ""


def test_block1_metadata_last_config_signatures_and_commit_hash(blocks) -> None:
    _b0, _b1, _r0, raw1 = blocks
    block = common_pb2.Block.FromString(raw1)
    md = block.metadata.metadata
    last = common_pb2.LastConfig.FromString(common_pb2.Metadata.FromString(md[1]).value)
    assert last.index == 0
    sigs = common_pb2.Metadata.FromString(md[common_pb2.SIGNATURES])
    obm = common_pb2.OrdererBlockMetadata.FromString(sigs.value)
    assert obm.last_config.index == 0 and obm.consenter_metadata
    assert len(sigs.signatures) == 1
    chash = common_pb2.Metadata.FromString(md[common_pb2.COMMIT_HASH]).value
    assert len(chash) == 32
    # configtxlator passes block metadata through as bytes: the same bytes.
    assert [_b64(m) for m in _b1["metadata"]["metadata"]] == list(md)


def test_block1_endorsed_rwset_reads_lifecycle_first(blocks) -> None:
    _b0, block1, _r0, _r1 = blocks
    (env,) = block1["data"]["data"]
    action = env["payload"]["data"]["actions"][0]["payload"]["action"]
    results = action["proposal_response_payload"]["extension"]["results"]
    namespaces = [ns["namespace"] for ns in results["ns_rwset"]]
    assert namespaces == ["_lifecycle", "devkv"]
    lifecycle = results["ns_rwset"][0]["rwset"]
    assert [r["key"] for r in lifecycle["reads"]] == ["namespaces/fields/devkv/Sequence"]
    assert lifecycle["writes"] == []
    assert env["payload"]["header"]["channel_header"]["type"] == common_pb2.ENDORSER_TRANSACTION
