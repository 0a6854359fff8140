"""Is the network usable yet, and who leads it: an endorsement that needs both orgs,
through the product's own Gateway client, and the orderers' Prometheus metrics."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from saga.adapters.fabric import (
    GatewayClient,
    GatewayError,
    SigningIdentity,
    load_connection_profile,
)

PROBE_KEY = "fabricnet-readiness-probe"


def gateway_client(
    profile: Path,
    msp_dir: Path,
    client_tls: tuple[Path, Path] | None = None,
    peer: str | None = None,
) -> GatewayClient:
    """A client of the profile's `peer` alone (default: the org's first peer)."""
    loaded = load_connection_profile(profile)
    endpoint = loaded.endpoint(peer)
    if client_tls is not None:
        endpoint = endpoint.with_client_tls(client_tls[0].read_bytes(), client_tls[1].read_bytes())
    return GatewayClient.connect(endpoint, SigningIdentity.from_msp_dir(loaded.msp_id, msp_dir))


def org_gateway_client(
    profile: Path, msp_dir: Path, client_tls: tuple[Path, Path] | None = None
) -> GatewayClient:
    """A client of every peer the profile lists for its org, moving to the next when
    the one in use cannot be reached (the product's clients do the same)."""
    loaded = load_connection_profile(profile)
    endpoints = [endpoint for _, endpoint in loaded.gateway_peers()]
    if client_tls is not None:
        cert, key = client_tls[0].read_bytes(), client_tls[1].read_bytes()
        endpoints = [e.with_client_tls(cert, key) for e in endpoints]
    return GatewayClient.connect(endpoints, SigningIdentity.from_msp_dir(loaded.msp_id, msp_dir))


def endorse_probe(client: GatewayClient, channel: str, orgs: Sequence[str]) -> None:
    """Endorse (never submit) a read of the probe key by every org in `orgs`."""
    client.prepare(
        channel, "sagafacts", "GetRecord", [PROBE_KEY], endorsing_orgs=list(orgs), timeout=10.0
    )


def wait_endorsable(
    client: GatewayClient, channel: str, orgs: Sequence[str], timeout: float
) -> float:
    """Retry the probe until it succeeds; returns the seconds it took."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            endorse_probe(client, channel, orgs)
            return time.monotonic() - start
        except GatewayError as exc:
            last = exc
            time.sleep(0.25)
    raise TimeoutError(f"no endorsement by {list(orgs)} within {timeout:g} s; last error: {last}")


def is_leader(operations_port: int, channel: str) -> bool | None:
    """From ``consensus_etcdraft_is_leader`` (or the BFT equivalent); None if the
    orderer does not answer or does not report the channel."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{operations_port}/metrics", timeout=2.0
        ) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    pattern = rf'^consensus_\w+_is_leader\{{channel="{re.escape(channel)}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        return None
    return float(match.group(1)) == 1.0
