"""Crypto material in the layout Fabric's `cryptogen` writes, made with `cryptography`.

Clients written for Fabric's test network (Node, Go, Java samples) find their
certificates and keys at the same paths, so they run against the devnet unchanged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from saga_devnet.config import DevnetConfig, OrgConfig

NODE_OUS_YAML = """NodeOUs:
  Enable: true
  ClientOUIdentifier:
    Certificate: cacerts/{ca}
    OrganizationalUnitIdentifier: client
  PeerOUIdentifier:
    Certificate: cacerts/{ca}
    OrganizationalUnitIdentifier: peer
  AdminOUIdentifier:
    Certificate: cacerts/{ca}
    OrganizationalUnitIdentifier: admin
  OrdererOUIdentifier:
    Certificate: cacerts/{ca}
    OrganizationalUnitIdentifier: orderer
"""

VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(domain: str, cn: str, ou: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "California"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "San Francisco"),
    ]
    if ou is None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, domain))
    else:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _validity() -> tuple[dt.datetime, dt.datetime]:
    # Backdated so that a clock skew between processes never makes a fresh cert "not yet valid".
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + VALIDITY


def make_ca(domain: str, cn: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(domain, cn)
    start, end = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issuer(cert, key)


def make_leaf(
    issuer: Issuer, cn: str, *, ou: str | None, tls: bool, sans: list[str] | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("", cn, ou))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=tls,
                data_encipherment=False,
                key_agreement=tls,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if tls:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        names: list[x509.GeneralName] = []
        for san in sans or [cn]:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer.key, hashes.SHA256()), key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8, as cryptogen writes priv_sk; Node's crypto.createPrivateKey reads it as is.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _write_msp(msp: Path, domain: str, ca: Issuer, tlsca: Issuer) -> None:
    ca_file = f"ca.{domain}-cert.pem"
    _write(msp / "cacerts" / ca_file, cert_pem(ca.cert))
    _write(msp / "tlscacerts" / f"tlsca.{domain}-cert.pem", cert_pem(tlsca.cert))
    _write(msp / "config.yaml", NODE_OUS_YAML.format(ca=ca_file).encode())


def _write_identity(
    base: Path, name: str, domain: str, ou: str, ca: Issuer, tlsca: Issuer, *, server: bool
) -> None:
    """One node or user: msp/{signcerts,keystore,cacerts,tlscacerts,config.yaml} and tls/."""
    msp = base / "msp"
    _write_msp(msp, domain, ca, tlsca)
    cert, key = make_leaf(ca, name, ou=ou, tls=False)
    _write(msp / "signcerts" / f"{name}-cert.pem", cert_pem(cert))
    _write(msp / "keystore" / "priv_sk", key_pem(key), private=True)
    short = name.split(".")[0]
    sans = [name, short, "localhost", "127.0.0.1", "::1"] if server else [name]
    tls_cert, tls_key = make_leaf(tlsca, name, ou=None, tls=True, sans=sans)
    tls = base / "tls"
    _write(tls / "ca.crt", cert_pem(tlsca.cert))
    stem = "server" if server else "client"
    _write(tls / f"{stem}.crt", cert_pem(tls_cert))
    _write(tls / f"{stem}.key", key_pem(tls_key), private=True)


def _write_org(root: Path, org: OrgConfig, node_kind: str) -> None:
    domain = org.domain
    ca = make_ca(domain, f"ca.{domain}")
    tlsca = make_ca(domain, f"tlsca.{domain}")
    _write(root / "ca" / f"ca.{domain}-cert.pem", cert_pem(ca.cert))
    _write(root / "ca" / "priv_sk", key_pem(ca.key), private=True)
    _write(root / "tlsca" / f"tlsca.{domain}-cert.pem", cert_pem(tlsca.cert))
    _write(root / "tlsca" / "priv_sk", key_pem(tlsca.key), private=True)
    _write_msp(root / "msp", domain, ca, tlsca)
    if node_kind == "peer":
        node = org.peer_host
        _write_identity(root / "peers" / node, node, domain, "peer", ca, tlsca, server=True)
    else:
        node = f"orderer.{domain}"
        _write_identity(root / "orderers" / node, node, domain, "orderer", ca, tlsca, server=True)
    for user, ou in (("Admin", "admin"), ("User1", "client")):
        uname = f"{user}@{domain}"
        _write_identity(root / "users" / uname, uname, domain, ou, ca, tlsca, server=False)


def org_root(directory: Path, org: OrgConfig, *, orderer: bool = False) -> Path:
    kind = "ordererOrganizations" if orderer else "peerOrganizations"
    return directory / "organizations" / kind / org.domain


def _generate_org(root: Path, org: OrgConfig, node_kind: str) -> None:
    if root.exists():
        return
    # Built aside and renamed in one step, so a crash never leaves half an org behind.
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _write_org(partial, org, node_kind)
    partial.rename(root)


def generate(directory: Path, cfg: DevnetConfig) -> None:
    """Write material for every org that has none yet; existing material is kept."""
    _generate_org(org_root(directory, cfg.orderer, orderer=True), cfg.orderer, "orderer")
    for org in cfg.orgs:
        _generate_org(org_root(directory, org), org, "peer")
