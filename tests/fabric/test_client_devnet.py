"""The Gateway client against the devnet process, using only the material it wrote.

Uses the ``devnet`` fixture of tests/support/devnet.py (a real devnet process,
TLS, two orgs, builtin ``devkv`` chaincode with a majority policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import grpc
import pytest

from saga.adapters.fabric import (
    AsyncGatewayClient,
    EndorseError,
    EvaluateError,
    GatewayClient,
    SigningIdentity,
    load_connection_profile,
)
from saga.adapters.fabric.errors import SubmitError


def _connect(devnet: Any, n: int = 1) -> tuple[GatewayClient, Any]:
    profile = load_connection_profile(devnet.profile(n))
    org = devnet.org(n)
    msp = devnet.org_dir(n) / "users" / f"User1@{org['domain']}" / "msp"
    identity = SigningIdentity.from_msp_dir(profile.msp_id, msp)
    return GatewayClient.connect(profile.endpoint(), identity), profile


def test_prepare_store_resubmit_and_commit_status_on_the_devnet(devnet: Any) -> None:
    key = f"k-{uuid.uuid4().hex}"
    client, profile = _connect(devnet)
    with client:
        prepared = client.prepare("mychannel", "devkv", "create", [key, "v1"])
        stored = prepared.to_bytes()
        assert prepared.result() == b"v1"

    # A new process rebuilds the transaction from stored bytes and submits it twice.
    again, _ = _connect(devnet)
    with again:
        again.submit(stored)
        first = again.commit_status("mychannel", prepared.txid, timeout=30)
        assert first.valid, first
        # Refusing the duplicate is as good as ordering it as DUPLICATE_TXID.
        with contextlib.suppress(SubmitError):
            again.submit(stored)
        assert again.commit_status("mychannel", prepared.txid, timeout=30) == first

        assert again.evaluate("mychannel", "devkv", "get", [key]) == b"v1"

        with pytest.raises(EndorseError) as refused:
            again.prepare("mychannel", "devkv", "create", [key, "v2"])
        assert "already recorded" in str(refused.value)
        assert refused.value.txid is not None

    async def async_status() -> bool:
        identity = again.identity
        async with AsyncGatewayClient.connect(profile.endpoint(), identity) as c:
            result = await c.commit_status("mychannel", prepared.txid, timeout=30)
            return result == first

    assert asyncio.run(async_status())


def test_mutual_tls_on_the_devnet_needs_the_users_client_certificate(
    devnet_factory: Any,
) -> None:
    net = devnet_factory(mutual_tls=True)
    profile = load_connection_profile(net.profile(1))
    user_dir = net.org_dir(1) / "users" / f"User1@{net.org(1)['domain']}"
    identity = SigningIdentity.from_msp_dir(profile.msp_id, user_dir / "msp")
    endpoint = profile.endpoint().with_client_tls(
        (user_dir / "tls" / "client.crt").read_bytes(),
        (user_dir / "tls" / "client.key").read_bytes(),
    )
    key = f"k-{uuid.uuid4().hex}"
    with GatewayClient.connect(endpoint, identity) as client:
        assert client.submit_transaction("mychannel", "devkv", "put", [key, "m"]) == b"m"
        assert client.evaluate("mychannel", "devkv", "get", [key]) == b"m"

    with (
        GatewayClient.connect(profile.endpoint(), identity) as anonymous,
        pytest.raises(EvaluateError) as refused,
    ):
        anonymous.evaluate("mychannel", "devkv", "get", [key], timeout=10)
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
