"""A client's Fabric identity: MSP id, X.509 certificate and the ECDSA key that signs for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from saga.adapters.fabric import crypto
from saga.adapters.fabric.protos import identities_pb2


def _public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def serialize_identity(msp_id: str, cert_pem: bytes) -> bytes:
    """The ``creator`` bytes: msp.SerializedIdentity{mspid, id_bytes=PEM certificate}."""
    return identities_pb2.SerializedIdentity(mspid=msp_id, id_bytes=cert_pem).SerializeToString()


@dataclass(frozen=True, slots=True)
class SigningIdentity:
    msp_id: str
    certificate_pem: bytes
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    creator: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cert = x509.load_pem_x509_certificate(self.certificate_pem)
        cert_key = cert.public_key()
        # A keystore key that does not match the certificate would only show up
        # much later as BAD_CREATOR_SIGNATURE from the peer; fail here instead.
        if not isinstance(cert_key, ec.EllipticCurvePublicKey) or _public_bytes(
            cert_key
        ) != _public_bytes(self.private_key.public_key()):
            raise ValueError("the private key does not belong to the certificate")
        object.__setattr__(self, "creator", serialize_identity(self.msp_id, self.certificate_pem))

    @classmethod
    def from_pem(
        cls, msp_id: str, certificate_pem: bytes, private_key_pem: bytes
    ) -> SigningIdentity:
        return cls(msp_id, certificate_pem, crypto.load_private_key(private_key_pem))

    @classmethod
    def from_msp_dir(cls, msp_id: str, msp_dir: str | Path) -> SigningIdentity:
        """Load ``signcerts/`` and ``keystore/`` from a standard MSP folder.

        cryptogen writes one key (``priv_sk``); a Fabric CA client may leave several
        after re-enrolling, so the key matching the certificate is chosen.
        """
        msp = Path(msp_dir)
        certs = sorted(p for p in (msp / "signcerts").iterdir() if p.is_file())
        if not certs:
            raise FileNotFoundError(f"no certificate in {msp / 'signcerts'}")
        cert_pem = certs[0].read_bytes()
        cert_key = x509.load_pem_x509_certificate(cert_pem).public_key()
        if not isinstance(cert_key, ec.EllipticCurvePublicKey):
            raise ValueError(f"{certs[0]} does not hold an ECDSA certificate")
        wanted = _public_bytes(cert_key)
        for key_path in sorted(p for p in (msp / "keystore").iterdir() if p.is_file()):
            try:
                key = crypto.load_private_key(key_path.read_bytes())
            except ValueError:
                continue
            if _public_bytes(key.public_key()) == wanted:
                return cls(msp_id, cert_pem, key)
        raise FileNotFoundError(f"no key in {msp / 'keystore'} matches {certs[0]}")

    def sign(self, message: bytes) -> bytes:
        """ECDSA signature of SHA-256(message), low-S, DER, as Fabric verifies it."""
        return crypto.sign(self.private_key, message)
