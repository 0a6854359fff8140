"""Membership: turn a SerializedIdentity into a validated (MSP id, role, cert) or refuse it.

Like Fabric's MSP with NodeOUs enabled: the certificate must be issued by the org's CA
and carry one of the OUs client / peer / admin / orderer, which becomes its role.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from saga.adapters.fabric import crypto
from saga_devnet.config import DevnetConfig, OrgConfig
from saga_devnet.cryptogen import org_root
from saga_devnet.protos import identities_pb2

ROLES = ("client", "peer", "admin", "orderer")


class IdentityError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    msp_id: str
    role: str
    cert_pem: bytes
    serialized: bytes

    def verify(self, signature: bytes, message: bytes) -> bool:
        return crypto.verify(self.cert_pem, signature, message)


@dataclass(frozen=True)
class Signer:
    """A node's own identity: the serialized creator bytes and the key that signs for it."""

    identity: Identity
    key: ec.EllipticCurvePrivateKey

    def sign(self, message: bytes) -> bytes:
        return crypto.sign(self.key, message)


def serialize(msp_id: str, cert_pem: bytes) -> bytes:
    return identities_pb2.SerializedIdentity(mspid=msp_id, id_bytes=cert_pem).SerializeToString()


class MembershipRegistry:
    def __init__(self, cas: dict[str, x509.Certificate]) -> None:
        self._cas = cas

    @classmethod
    def load(cls, directory: Path, cfg: DevnetConfig) -> MembershipRegistry:
        cas: dict[str, x509.Certificate] = {}
        orgs: list[tuple[OrgConfig, bool]] = [(cfg.orderer, True)] + [(o, False) for o in cfg.orgs]
        for org, is_orderer in orgs:
            ca_file = org_root(directory, org, orderer=is_orderer) / "msp" / "cacerts"
            pem = next(ca_file.iterdir()).read_bytes()
            cas[org.msp_id] = x509.load_pem_x509_certificate(pem)
        return cls(cas)

    @property
    def msp_ids(self) -> list[str]:
        return list(self._cas)

    def deserialize(self, serialized: bytes) -> Identity:
        """Validate an identity against its MSP; raise IdentityError when it does not belong."""
        sid = identities_pb2.SerializedIdentity()
        try:
            sid.ParseFromString(serialized)
        except Exception as exc:
            raise IdentityError(f"could not deserialize identity: {exc}") from exc
        ca = self._cas.get(sid.mspid)
        if ca is None:
            raise IdentityError(f"MSP {sid.mspid} is unknown")
        try:
            cert = x509.load_pem_x509_certificate(sid.id_bytes)
        except ValueError as exc:
            raise IdentityError(f"could not decode the certificate: {exc}") from exc
        try:
            cert.verify_directly_issued_by(ca)
        except Exception as exc:
            raise IdentityError(
                f"the supplied identity is not valid: x509: certificate signed by unknown "
                f"authority (MSP {sid.mspid})"
            ) from exc
        now = dt.datetime.now(dt.UTC)
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise IdentityError("the supplied identity is not valid: certificate has expired")
        ous = [
            a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        ]
        role = next((str(ou) for ou in ous if ou in ROLES), "")
        if not role:
            raise IdentityError(
                "the supplied identity has no NodeOU role (client/peer/admin/orderer)"
            )
        return Identity(sid.mspid, role, sid.id_bytes, serialized)


def load_signer(msp_dir: Path, msp_id: str) -> Signer:
    """Load a node's signing identity from an MSP folder (signcerts + keystore)."""
    cert_pem = next((msp_dir / "signcerts").iterdir()).read_bytes()
    key = crypto.load_private_key(next((msp_dir / "keystore").iterdir()).read_bytes())
    cert = x509.load_pem_x509_certificate(cert_pem)
    ous = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    role = next((str(ou) for ou in ous if ou in ROLES), "member")
    return Signer(Identity(msp_id, role, cert_pem, serialize(msp_id, cert_pem)), key)
