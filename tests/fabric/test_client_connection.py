"""Reading Fabric common connection profiles, as the test network writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga.adapters.fabric import GatewayEndpoint, load_connection_profile
from saga.adapters.fabric.connection import (
    ClientTlsError,
    check_client_tls,
    may_want_client_certificate,
)
from saga.bootstrap import Container
from saga.config import ConfigError, Settings
from tests.fabric.client_fixtures import CertAuthority, write_msp_dir

# Not a key: the PEM markers are joined at run time so that the repository's secret
# scan (tests/security/test_repo_secrets.py) finds no key block in this file.
_FAKE_KEY_PEM = b"-----BEGIN " + b"PRIVATE KEY-----\nAAAA\n-----END " + b"PRIVATE KEY-----\n"


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


# -- the client TLS pair for mutual TLS ----------------------------------------------------


def test_client_tls_pair_is_checked_when_attached(tls_ca_pem: bytes) -> None:
    client_ca = CertAuthority.create("tlsca.org1.example.com")
    cert, key = client_ca.issue("User1@org1.example.com", client=True)
    other_cert, other_key = client_ca.issue("User2@org1.example.com", client=True)
    base = GatewayEndpoint("h:1", tls_ca_pem)

    attached = base.with_client_tls(cert, key)
    assert (attached.client_cert, attached.client_key) == (cert, key)
    assert attached.without_client_tls() == base
    # Anything else gRPC would only report as a failed handshake, like a peer that is down.
    for bad_cert, bad_key, part in [
        (b"not pem", key, "certificate"),
        (key, key, "certificate"),
        (cert, _FAKE_KEY_PEM, "key"),
        (cert, cert, "key"),
        (cert, other_key, "pair"),
    ]:
        with pytest.raises(ClientTlsError) as caught:
            base.with_client_tls(bad_cert, bad_key)
        assert caught.value.part == part
    with pytest.raises(ClientTlsError, match="does not belong"):
        check_client_tls(other_cert, key)
    with pytest.raises(ValueError, match="plaintext"):
        GatewayEndpoint("h:1").with_client_tls(cert, key)


def test_an_encrypted_client_key_is_refused_with_why(tls_ca_pem: bytes) -> None:
    from cryptography.hazmat.primitives import serialization

    cert, key_pem = CertAuthority.create("tlsca").issue("User1", client=True)
    key = serialization.load_pem_private_key(key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ClientTlsError, match="encrypted; gRPC needs it unencrypted"):
        check_client_tls(cert, encrypted)


@pytest.mark.parametrize(
    ("message", "wanted"),
    [
        # A Fabric 2.5 peer with clientAuthRequired (seen in tests/fabric/real).
        (
            "failed to connect to all addresses; last error: UNAVAILABLE: "
            "ipv4:127.0.0.1:7051: Unwrap failed (TSI_DATA_CORRUPTED)",
            True,
        ),
        ("... SSL routines:OPENSSL_internal:TLSV1_CERTIFICATE_REQUIRED", True),
        # A gRPC C-core server (the devnet) that requires them: it closes the socket.
        (
            "failed to connect to all addresses; last error: UNAVAILABLE: "
            "ipv4:127.0.0.1:7051: Socket closed",
            True,
        ),
        ("... SSL routines:OPENSSL_internal:SSLV3_ALERT_HANDSHAKE_FAILURE", True),
        # Our check of the peer failed: the profile's tlsCACerts, not a client certificate.
        (
            "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
            "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer",
            False,
        ),
        ("failed to connect to all addresses; last error: UNAVAILABLE: Connection refused", False),
    ],
)
def test_a_peer_that_may_want_a_client_certificate_is_recognised(
    tls_ca_pem: bytes, message: str, wanted: bool
) -> None:
    tls = GatewayEndpoint("h:1", tls_ca_pem)
    assert may_want_client_certificate(tls, message) is wanted
    # Never for plaintext, nor when a client certificate was sent (it was refused instead).
    assert not may_want_client_certificate(GatewayEndpoint("h:1"), message)
    cert, key = CertAuthority.create("tlsca").issue("User1", client=True)
    assert not may_want_client_certificate(tls.with_client_tls(cert, key), message)


def _ledger_settings(tmp_path: Path, tls_ca_pem: bytes, **tls: str) -> Settings:
    profile = tmp_path / "connection-org1.json"
    profile.write_text(json.dumps(_test_network_profile(tls_ca_pem.decode())))
    msp, _ = write_msp_dir(tmp_path / "user", CertAuthority.create("ca.org1.example.com"))
    env = {"SAGA_FABRIC_PROFILE": str(profile), "SAGA_FABRIC_MSP_DIR": str(msp)}
    return Settings.from_env({**env, **tls})


def test_the_container_gives_every_ledger_client_the_settings_pair(
    tmp_path: Path, tls_ca_pem: bytes
) -> None:
    cert, key = CertAuthority.create("tlsca.org1.example.com").issue("User1", client=True)
    (tmp_path / "client.crt").write_bytes(cert)
    (tmp_path / "client.key").write_bytes(key)
    pair = {
        "SAGA_FABRIC_TLS_CERT": str(tmp_path / "client.crt"),
        "SAGA_FABRIC_TLS_KEY": str(tmp_path / "client.key"),
    }
    endpoint, _ = Container(_ledger_settings(tmp_path, tls_ca_pem, **pair)).fabric_access()
    assert (endpoint.client_cert, endpoint.client_key) == (cert, key)
    assert endpoint.tls_root_certs == tls_ca_pem
    plain, _ = Container(_ledger_settings(tmp_path, tls_ca_pem)).fabric_access()
    assert plain.client_cert is None

    # A bad file is a configuration error naming the setting (and the file).
    (tmp_path / "other.key").write_bytes(CertAuthority.create("x").issue("y")[1])
    mismatch = {**pair, "SAGA_FABRIC_TLS_KEY": str(tmp_path / "other.key")}
    with pytest.raises(ConfigError) as caught:
        Container(_ledger_settings(tmp_path, tls_ca_pem, **mismatch)).fabric_access()
    assert "does not belong to the certificate" in str(caught.value)
    assert f"SAGA_FABRIC_TLS_KEY={tmp_path / 'other.key'}" in str(caught.value)
    swapped = {"SAGA_FABRIC_TLS_CERT": pair["SAGA_FABRIC_TLS_KEY"]}
    swapped["SAGA_FABRIC_TLS_KEY"] = pair["SAGA_FABRIC_TLS_KEY"]
    with pytest.raises(ConfigError, match=r"^SAGA_FABRIC_TLS_CERT=.*not a PEM X.509"):
        Container(_ledger_settings(tmp_path, tls_ca_pem, **swapped)).fabric_access()


def test_client_tls_for_a_plaintext_peer_is_a_configuration_error(
    tmp_path: Path, tls_ca_pem: bytes
) -> None:
    cert, key = CertAuthority.create("tlsca").issue("User1", client=True)
    (tmp_path / "client.crt").write_bytes(cert)
    (tmp_path / "client.key").write_bytes(key)
    settings = _ledger_settings(
        tmp_path,
        tls_ca_pem,
        SAGA_FABRIC_TLS_CERT=str(tmp_path / "client.crt"),
        SAGA_FABRIC_TLS_KEY=str(tmp_path / "client.key"),
    )
    data = json.loads(Path(settings.fabric_profile).read_text())
    data["peers"]["peer0.org1.example.com"]["url"] = "grpc://localhost:7051"
    Path(settings.fabric_profile).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"plaintext \(grpc:// in SAGA_FABRIC_PROFILE\)"):
        Container(settings).fabric_access()
