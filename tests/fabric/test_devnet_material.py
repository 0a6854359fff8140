"""Crypto material and connection profiles: cryptogen layout, openssl-verifiable chains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID


def init(directory: Path, seed: dict | None = None) -> None:
    args = [sys.executable, "-m", "saga_devnet", "init", "--dir", str(directory)]
    if seed is not None:
        seed_file = directory.parent / f"{directory.name}-seed.yaml"
        seed_file.write_text(yaml.safe_dump(seed))
        args += ["--config", str(seed_file)]
    subprocess.run(args, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("material") / "net"
    init(directory)
    return directory


def openssl_verify(ca: Path, cert: Path) -> None:
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip().endswith(": OK"), out.stdout + out.stderr


def test_peer_org_layout(material: Path):
    org = material / "organizations" / "peerOrganizations" / "org1.example.com"
    expected = [
        "ca/ca.org1.example.com-cert.pem",
        "ca/priv_sk",
        "tlsca/tlsca.org1.example.com-cert.pem",
        "msp/cacerts/ca.org1.example.com-cert.pem",
        "msp/tlscacerts/tlsca.org1.example.com-cert.pem",
        "msp/config.yaml",
        "peers/peer0.org1.example.com/msp/signcerts/peer0.org1.example.com-cert.pem",
        "peers/peer0.org1.example.com/msp/keystore/priv_sk",
        "peers/peer0.org1.example.com/msp/config.yaml",
        "peers/peer0.org1.example.com/tls/ca.crt",
        "peers/peer0.org1.example.com/tls/server.crt",
        "peers/peer0.org1.example.com/tls/server.key",
        "connection-org1.json",
    ]
    for user in ("User1", "Admin"):
        base = f"users/{user}@org1.example.com"
        expected += [
            f"{base}/msp/signcerts/{user}@org1.example.com-cert.pem",
            f"{base}/msp/keystore/priv_sk",
            f"{base}/msp/cacerts/ca.org1.example.com-cert.pem",
            f"{base}/msp/tlscacerts/tlsca.org1.example.com-cert.pem",
            f"{base}/tls/client.crt",
            f"{base}/tls/client.key",
            f"{base}/tls/ca.crt",
        ]
    missing = [p for p in expected if not (org / p).is_file()]
    assert not missing
    node_ous = yaml.safe_load((org / "msp" / "config.yaml").read_text())["NodeOUs"]
    assert node_ous["Enable"] is True
    assert node_ous["PeerOUIdentifier"]["OrganizationalUnitIdentifier"] == "peer"
    orderer = material / "organizations" / "ordererOrganizations" / "example.com"
    assert (orderer / "orderers/orderer.example.com/tls/server.crt").is_file()
    assert (
        material / "organizations/peerOrganizations/org2.example.com/connection-org2.json"
    ).is_file()


def test_openssl_verifies_every_signing_and_tls_cert(material: Path):
    checked = 0
    for org in (material / "organizations").glob("*Organizations/*"):
        ca = next((org / "ca").glob("*-cert.pem"))
        tlsca = next((org / "tlsca").glob("*-cert.pem"))
        for cert in org.glob("*/*/msp/signcerts/*.pem"):
            openssl_verify(ca, cert)
            checked += 1
        for cert in [*org.glob("*/*/tls/server.crt"), *org.glob("*/*/tls/client.crt")]:
            openssl_verify(tlsca, cert)
            checked += 1
    # 3 orgs x (1 node + 2 users) x (signing + tls)
    assert checked == 18


def test_node_ous_and_sans(material: Path):
    peer = (
        material / "organizations/peerOrganizations/org1.example.com/peers/peer0.org1.example.com"
    )
    sign = x509.load_pem_x509_certificate(
        (peer / "msp/signcerts/peer0.org1.example.com-cert.pem").read_bytes()
    )
    ous = [a.value for a in sign.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    assert ous == ["peer"]
    tls = x509.load_pem_x509_certificate((peer / "tls/server.crt").read_bytes())
    sans = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "peer0.org1.example.com" in sans.get_values_for_type(x509.DNSName)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)


def test_connection_profile_shape(material: Path):
    org = material / "organizations/peerOrganizations/org1.example.com"
    profile = json.loads((org / "connection-org1.json").read_text())
    assert profile["client"]["organization"] == "Org1"
    assert profile["organizations"]["Org1"]["mspid"] == "Org1MSP"
    assert profile["organizations"]["Org1"]["peers"] == ["peer0.org1.example.com"]
    peer = profile["peers"]["peer0.org1.example.com"]
    assert peer["url"] == "grpcs://localhost:7051"
    assert peer["grpcOptions"]["ssl-target-name-override"] == "peer0.org1.example.com"
    assert peer["tlsCACerts"]["pem"] == (org / "tlsca/tlsca.org1.example.com-cert.pem").read_text()


def test_org_names_come_from_config(tmp_path: Path):
    directory = tmp_path / "net"
    init(
        directory,
        {
            "orgs": [
                {
                    "name": "Government",
                    "msp_id": "GovMSP",
                    "domain": "government.peer.com",
                    "port": 8051,
                },
                {"name": "Bank", "msp_id": "BankMSP", "domain": "bank.peer.com", "port": 8061},
            ]
        },
    )
    org = directory / "organizations/peerOrganizations/government.peer.com"
    openssl_verify(
        org / "ca/ca.government.peer.com-cert.pem",
        org / "users/User1@government.peer.com/msp/signcerts/User1@government.peer.com-cert.pem",
    )
    profile = json.loads((org / "connection-org1.json").read_text())
    assert profile["organizations"]["Government"]["mspid"] == "GovMSP"
    assert profile["peers"]["peer0.government.peer.com"]["url"] == "grpcs://localhost:8051"
    assert (
        directory / "organizations/peerOrganizations/bank.peer.com/connection-org2.json"
    ).exists()
