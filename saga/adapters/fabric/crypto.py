"""Fabric's signing rules: ECDSA P-256 over SHA-256, low-S, DER; txid derivation.

Shared by the Gateway client and the devnet, so both sides agree byte for byte.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509 import load_pem_x509_certificate

# Order of the P-256 group; Fabric rejects signatures whose S exceeds half of it.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_HALF_ORDER = P256_ORDER >> 1

NONCE_SIZE = 24


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def compute_txid(nonce: bytes, creator: bytes) -> str:
    """hex(SHA-256(nonce || serialized creator identity)), as protoutil.ComputeTxID."""
    return hashlib.sha256(nonce + creator).hexdigest()


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the private key is not an ECDSA key; Fabric identities use ECDSA P-256")
    return key


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """Sign SHA-256(message), normalised to low S and DER-encoded."""
    der = key.sign(message, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    if s > P256_HALF_ORDER:
        s = P256_ORDER - s
    return encode_dss_signature(r, s)


def is_low_s(signature: bytes) -> bool:
    _, s = decode_dss_signature(signature)
    return s <= P256_HALF_ORDER


def verify(cert_pem: bytes, signature: bytes, message: bytes) -> bool:
    """True when signature is a valid low-S ECDSA signature of message by the cert's key."""
    try:
        cert = load_pem_x509_certificate(cert_pem)
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return False
        if not is_low_s(signature):
            return False
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
