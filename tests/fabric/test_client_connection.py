"""Reading Fabric common connection profiles, as the test network writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga.fabric import GatewayEndpoint, load_connection_profile
from tests.fabric.client_fixtures import CertAuthority


@pytest.fixture(scope="module")
def tls_ca_pem() -> bytes:
    return CertAuthority.create("tlsca.org1.example.com").cert_pem


def _test_network_profile(pem: str) -> dict[str, Any]:
    """The shape of test-network's connection-org1.json."""
    return {
        "name": "test-network-org1",
        "version": "1.0.0",
        "client": {
            "organization": "Org1",
            "connection": {"timeout": {"peer": {"endorser": "300"}}},
        },
        "organizations": {
            "Org1": {
                "mspid": "Org1MSP",
                "peers": ["peer0.org1.example.com"],
                "certificateAuthorities": ["ca.org1.example.com"],
            }
        },
        "peers": {
            "peer0.org1.example.com": {
                "url": "grpcs://localhost:7051",
                "tlsCACerts": {"pem": pem},
                "grpcOptions": {
                    "ssl-target-name-override": "peer0.org1.example.com",
                    "hostnameOverride": "peer0.org1.example.com",
                },
            }
        },
        "certificateAuthorities": {
            "ca.org1.example.com": {
                "url": "https://localhost:7054",
                "caName": "ca-org1",
                "tlsCACerts": {"pem": [pem]},
                "httpOptions": {"verify": False},
            }
        },
    }


def test_reads_the_test_network_profile_with_inline_pem(tmp_path: Path, tls_ca_pem: bytes) -> None:
    path = tmp_path / "connection-org1.json"
    path.write_text(json.dumps(_test_network_profile(tls_ca_pem.decode()), indent=4))

    profile = load_connection_profile(path)

    assert profile.name == "test-network-org1"
    assert profile.organization == "Org1"
    assert profile.msp_id == "Org1MSP"
    endpoint = profile.endpoint()
    assert endpoint == profile.endpoint("peer0.org1.example.com")
    assert endpoint.address == "localhost:7051"
    assert endpoint.tls_root_certs == tls_ca_pem
    assert endpoint.server_name_override == "peer0.org1.example.com"
    assert endpoint.client_cert is None


def test_tls_ca_path_is_resolved_from_the_profiles_folder(
    tmp_path: Path, tls_ca_pem: bytes
) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.crt").write_bytes(tls_ca_pem)
    data = _test_network_profile("")
    data["peers"]["peer0.org1.example.com"]["tlsCACerts"] = {"path": "../tls/ca.crt"}
    data["peers"]["peer0.org1.example.com"]["grpcOptions"] = {"hostnameOverride": "p0"}
    (tmp_path / "profiles").mkdir()
    path = tmp_path / "profiles" / "connection-org1.json"
    path.write_text(json.dumps(data))

    endpoint = load_connection_profile(path).endpoint()

    assert endpoint.tls_root_certs == tls_ca_pem
    assert endpoint.server_name_override == "p0"


def test_yaml_profile_plaintext_peer_and_organization_choice(
    tmp_path: Path, tls_ca_pem: bytes
) -> None:
    data = _test_network_profile(tls_ca_pem.decode())
    del data["client"]
    data["organizations"]["Org2"] = {"mspid": "Org2MSP", "peers": ["peer0.org2"]}
    data["peers"]["peer0.org2"] = {"url": "grpc://10.0.0.2:9051"}
    path = tmp_path / "connection.yaml"
    path.write_text(yaml.safe_dump(data))

    with pytest.raises(ValueError, match="no client organization"):
        load_connection_profile(path)
    profile = load_connection_profile(path, organization="Org2")

    assert profile.msp_id == "Org2MSP"
    assert profile.endpoint() == GatewayEndpoint(address="10.0.0.2:9051")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["organizations"]["Org1"].pop("mspid"), "no mspid"),
        (lambda d: d["client"].update(organization="Nope"), "not in the connection profile"),
        (
            lambda d: d["peers"]["peer0.org1.example.com"].pop("tlsCACerts"),
            "gives no tlsCACerts",
        ),
        (
            lambda d: d["peers"]["peer0.org1.example.com"].update(url="grpcs://nohostport"),
            "needs a host and a port",
        ),
        (
            lambda d: d["peers"]["peer0.org1.example.com"].update(url="https://h:1"),
            "scheme",
        ),
    ],
)
def test_broken_profiles_are_refused_with_a_reason(
    tmp_path: Path, tls_ca_pem: bytes, change: Any, message: str
) -> None:
    data = _test_network_profile(tls_ca_pem.decode())
    change(data)
    path = tmp_path / "connection-org1.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        load_connection_profile(path)


def test_unknown_peer_and_half_configured_mutual_tls_are_refused(
    tmp_path: Path, tls_ca_pem: bytes
) -> None:
    path = tmp_path / "connection-org1.json"
    path.write_text(json.dumps(_test_network_profile(tls_ca_pem.decode())))
    profile = load_connection_profile(path)
    with pytest.raises(ValueError, match="no peer"):
        profile.endpoint("peer9.org1.example.com")
    with pytest.raises(ValueError, match="both"):
        GatewayEndpoint("h:1", tls_ca_pem, client_cert=b"cert")
    with pytest.raises(ValueError, match="needs TLS"):
        GatewayEndpoint("h:1", None, client_cert=b"c", client_key=b"k")
