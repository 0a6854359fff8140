"""Where a Gateway peer is and how to reach it: endpoint, TLS, connection profiles.

A connection profile is the JSON (or YAML) "common connection profile" that
Fabric's test network writes as ``connection-org1.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import grpc
import grpc.aio
import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from saga.core.errors import SagaError

# Without keepalive a long CommitStatus wait over a dead NAT or load balancer
# hangs until its deadline; with it the call fails fast and is retried.
_KEEPALIVE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A channel to a peer that was down redials after an exponential backoff of up
    # to 120 s by default; a client that moves back to that peer once it returns
    # must find it within seconds.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


@dataclass(frozen=True, slots=True)
class GatewayEndpoint:
    """A peer's Gateway service. ``tls_root_certs`` None means plaintext."""

    address: str
    tls_root_certs: bytes | None = field(default=None, repr=False)
    server_name_override: str | None = None
    client_cert: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("mutual TLS needs both a client certificate and its key")
        if self.client_cert is not None and self.tls_root_certs is None:
            raise ValueError("mutual TLS needs TLS: give the server's CA certificates")

    def with_client_tls(self, cert_pem: bytes, key_pem: bytes) -> GatewayEndpoint:
        """This endpoint with a client certificate and key for mutual TLS.

        The pair is checked here (see check_client_tls): gRPC would only report a bad
        one as a failed handshake, which reads like an unreachable peer.
        """
        if self.tls_root_certs is None:
            raise ValueError(f"{self.address} is plaintext (grpc://): mutual TLS needs grpcs://")
        check_client_tls(cert_pem, key_pem)
        return replace(self, client_cert=cert_pem, client_key=key_pem)

    def without_client_tls(self) -> GatewayEndpoint:
        return replace(self, client_cert=None, client_key=None)

    def _options(self, extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        options = list(_KEEPALIVE_OPTIONS)
        if self.server_name_override:
            options.append(("grpc.ssl_target_name_override", self.server_name_override))
            options.append(("grpc.default_authority", self.server_name_override))
        options.extend(extra)
        return options

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_root_certs,
            private_key=self.client_key,
            certificate_chain=self.client_cert,
        )

    def open_channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking-API channel; create one per process and reuse it for every call."""
        if self.tls_root_certs is None:
            return grpc.insecure_channel(self.address, options=self._options(options))
        return grpc.secure_channel(self.address, self._credentials(), self._options(options))

    def open_aio_channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel; open it inside the event loop that will use it."""
        if self.tls_root_certs is None:
            return grpc.aio.insecure_channel(self.address, options=self._options(options))
        return grpc.aio.secure_channel(self.address, self._credentials(), self._options(options))


class ClientTlsError(SagaError, ValueError):
    """A client TLS certificate or key that cannot be used; ``part`` says which."""

    def __init__(self, part: Literal["certificate", "key", "pair"], message: str) -> None:
        super().__init__(message)
        self.part = part


def _public_key_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def check_client_tls(cert_pem: bytes, key_pem: bytes) -> None:
    """Raise ClientTlsError unless the PEM certificate and unencrypted key belong together.

    Not checked: expiry and issuer, which only the peer can judge (its trusted TLS CAs
    and clock); a certificate it refuses fails the handshake like a missing one.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ClientTlsError("certificate", f"not a PEM X.509 certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ClientTlsError(
            "key", "the private key is encrypted; gRPC needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ClientTlsError("key", f"not a PEM private key ({exc})") from None
    if _public_key_der(cert.public_key()) != _public_key_der(key.public_key()):
        raise ClientTlsError("pair", "the private key does not belong to the certificate")


# What a client without a certificate sees when the server demands one. A Go server
# (Fabric's peer) finishes the TLS 1.3 handshake and then sends a "certificate
# required" alert, which gRPC's BoringSSL reports on the first read as
# TSI_DATA_CORRUPTED; a gRPC C-core server just closes the socket; TLS 1.2 servers
# fail the handshake itself. Each also has other causes, hence "may" in the hints.
_NO_CLIENT_CERT_SYMPTOMS = (
    "tsi_data_corrupted",
    "certificate required",
    "certificate_required",
    "handshake failure",
    "handshake_failure",
    "peer_did_not_return_a_certificate",
    "socket closed",
)


def may_want_client_certificate(endpoint: GatewayEndpoint, error_message: str) -> bool:
    """Whether a failed connection looks like a peer that requires mutual TLS.

    True only for a TLS endpoint that sent no client certificate, and never when our
    own check of the peer's certificate failed (that is the profile's tlsCACerts).
    """
    if endpoint.tls_root_certs is None or endpoint.client_cert is not None:
        return False
    said = error_message.lower()
    if "certificate_verify_failed" in said:
        return False
    return any(symptom in said for symptom in _NO_CLIENT_CERT_SYMPTOMS)


@dataclass(frozen=True, slots=True)
class ConnectionProfile:
    """The parts of a common connection profile a Gateway client needs."""

    name: str
    organization: str
    msp_id: str
    peers: Mapping[str, GatewayEndpoint]
    org_peers: tuple[str, ...]

    def endpoint(self, peer: str | None = None) -> GatewayEndpoint:
        """The named peer, or else the client organization's first peer."""
        if peer is None:
            candidates = [p for p in self.org_peers if p in self.peers] or list(self.peers)
            if not candidates:
                raise ValueError(f"connection profile {self.name!r} lists no peers")
            peer = candidates[0]
        try:
            return self.peers[peer]
        except KeyError:
            raise ValueError(f"connection profile {self.name!r} has no peer {peer!r}") from None

    def gateway_peers(
        self, names: Sequence[str] = (), first: str | None = None
    ) -> list[tuple[str, GatewayEndpoint]]:
        """(name, endpoint) of the peers a gateway client may use, in order: `names`
        when given, else every peer the client organization lists (`first`, if
        named, leading); a profile without an org peer list gives its first peer."""
        if names:
            chosen = list(names)
        else:
            chosen = [p for p in self.org_peers if p in self.peers]
            if not chosen:
                if not self.peers:
                    raise ValueError(f"connection profile {self.name!r} lists no peers")
                chosen = [next(iter(self.peers))]
            if first is not None:
                chosen = [first, *(p for p in chosen if p != first)]
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"peer listed twice: {', '.join(chosen)}")
        return [(name, self.endpoint(name)) for name in chosen]


def _read_pem(entry: Mapping[str, Any] | None, base_dir: Path, what: str) -> bytes | None:
    if not entry:
        return None
    if entry.get("pem"):
        return str(entry["pem"]).encode()
    if entry.get("path"):
        path = Path(str(entry["path"]))
        return (path if path.is_absolute() else base_dir / path).read_bytes()
    raise ValueError(f"{what} has neither 'pem' nor 'path'")


def _endpoint(name: str, peer: Mapping[str, Any], base_dir: Path) -> GatewayEndpoint:
    url = str(peer.get("url", ""))
    parts = urlsplit(url if "://" in url else f"grpcs://{url}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"peer {name!r}: url {url!r} needs a host and a port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    grpc_options = peer.get("grpcOptions") or {}
    override = grpc_options.get("ssl-target-name-override") or grpc_options.get("hostnameOverride")
    if parts.scheme == "grpc":
        return GatewayEndpoint(address=f"{host}:{parts.port}")
    if parts.scheme != "grpcs":
        raise ValueError(f"peer {name!r}: url scheme must be grpc or grpcs, not {parts.scheme!r}")
    roots = _read_pem(peer.get("tlsCACerts"), base_dir, f"peer {name!r} tlsCACerts")
    if roots is None:
        raise ValueError(f"peer {name!r} uses grpcs but gives no tlsCACerts")
    return GatewayEndpoint(
        address=f"{host}:{parts.port}",
        tls_root_certs=roots,
        server_name_override=str(override) if override else None,
    )


def parse_connection_profile(
    profile: Mapping[str, Any], base_dir: str | Path = ".", organization: str | None = None
) -> ConnectionProfile:
    """Read a profile already loaded as a mapping; relative paths resolve from ``base_dir``."""
    base = Path(base_dir)
    orgs = profile.get("organizations") or {}
    org = organization or (profile.get("client") or {}).get("organization")
    if org is None:
        if len(orgs) != 1:
            raise ValueError("the profile names no client organization; pass organization=")
        org = next(iter(orgs))
    if org not in orgs:
        raise ValueError(f"organization {org!r} is not in the connection profile")
    org_entry = orgs[org] or {}
    msp_id = org_entry.get("mspid")
    if not msp_id:
        raise ValueError(f"organization {org!r} has no mspid")
    peers = {
        name: _endpoint(name, entry or {}, base)
        for name, entry in (profile.get("peers") or {}).items()
    }
    return ConnectionProfile(
        name=str(profile.get("name", "")),
        organization=str(org),
        msp_id=str(msp_id),
        peers=peers,
        org_peers=tuple(str(p) for p in org_entry.get("peers") or ()),
    )


def load_connection_profile(path: str | Path, organization: str | None = None) -> ConnectionProfile:
    """Load ``connection-org1.json`` (or a .yaml profile) from disk."""
    file = Path(path)
    text = file.read_text()
    data = yaml.safe_load(text) if file.suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{file} is not a connection profile")
    return parse_connection_profile(data, file.parent, organization)
