"""The asyncio client: many commit waits at once on one channel, and its errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from fabric_protos.peer import transaction_pb2

from saga.adapters.fabric import (
    AsyncGatewayClient,
    CommitStatusError,
    Deadlines,
    EvaluateError,
    GatewayClient,
    GatewayEndpoint,
    SigningIdentity,
    SubmitError,
)
from saga.ports.ledger import AsyncCommitStatus, CommitResult, StatusUnknown
from tests.fabric.client_fixtures import (
    PEER_HOST,
    Failure,
    GatewayServer,
    ScriptedGateway,
    ServerTls,
    TlsSet,
    new_identity,
)

WAITERS = 2000


@pytest.fixture(scope="module")
def identity() -> SigningIdentity:
    return new_identity("Org1MSP")


@pytest.fixture
def server() -> Iterator[GatewayServer]:
    with GatewayServer(ScriptedGateway(auto_commit=False)) as running:
        yield running


def test_thousands_of_commit_waits_share_one_channel_within_the_peers_limit(
    server: GatewayServer, identity: SigningIdentity
) -> None:
    txids = [f"{i:064x}" for i in range(WAITERS)]
    limit = 300

    async def scenario() -> list[CommitResult]:
        async with AsyncGatewayClient.connect(
            GatewayEndpoint(server.address), identity, max_in_flight=limit
        ) as c:
            assert isinstance(c, AsyncCommitStatus)
            waits = [
                asyncio.ensure_future(c.commit_status("mychannel", t, timeout=60)) for t in txids
            ]
            # The peer sees at most `limit` open calls; the rest wait in the client.
            deadline = time.monotonic() + 30
            while sum(1 for n, _ in server.servicer.calls if n == "CommitStatus") < limit:
                assert time.monotonic() < deadline, "the waits did not reach the server"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert sum(1 for n, _ in server.servicer.calls if n == "CommitStatus") == limit
            assert c.in_flight == limit
            assert not any(w.done() for w in waits)
            # Blocks are cut: every transaction commits, half of them invalid.
            for i, txid in enumerate(txids):
                code = transaction_pb2.VALID if i % 2 == 0 else transaction_pb2.MVCC_READ_CONFLICT
                await asyncio.to_thread(server.commit, txid, code, 100 + i // 500)
            results = await asyncio.gather(*waits)
            assert c.in_flight == 0
            return results

    results = asyncio.run(scenario())

    assert [r.txid for r in results] == txids
    assert all(r.valid == (i % 2 == 0) for i, r in enumerate(results))
    assert {r.code_name for r in results} == {"VALID", "MVCC_READ_CONFLICT"}
    assert results[-1].block_number == 100 + (WAITERS - 1) // 500
    assert len(server.servicer.peers) == 1


def test_waiting_for_a_free_call_slot_counts_against_the_deadline(
    server: GatewayServer, identity: SigningIdentity
) -> None:
    async def scenario() -> CommitStatusError:
        async with AsyncGatewayClient.connect(
            GatewayEndpoint(server.address), identity, max_in_flight=1
        ) as c:
            holder = asyncio.ensure_future(c.commit_status("mychannel", "aa" * 32, timeout=30))
            while c.in_flight == 0:
                await asyncio.sleep(0.01)
            with pytest.raises(CommitStatusError) as caught:
                await c.commit_status("mychannel", "bb" * 32, timeout=0.2)
            await asyncio.to_thread(server.commit, "aa" * 32)
            assert (await holder).valid
            return caught.value

    error = asyncio.run(scenario())
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.txid == "bb" * 32
    assert "no free call slot" in str(error)
    assert [r.transaction_id for n, r in _commit_status_requests(server)] == ["aa" * 32]


def _commit_status_requests(server: GatewayServer) -> list[tuple[str, object]]:
    from fabric_protos.gateway import gateway_pb2

    return [
        (n, gateway_pb2.CommitStatusRequest.FromString(r.request))
        for n, r in server.servicer.calls
        if n == "CommitStatus"
    ]


def test_async_deadline_and_unavailable_are_status_unknown(
    server: GatewayServer, identity: SigningIdentity
) -> None:
    with GatewayServer(ScriptedGateway()) as stopped:
        dead_address = stopped.address

    async def scenario() -> tuple[CommitStatusError, CommitStatusError]:
        deadlines = Deadlines(commit_status=0.3)
        async with AsyncGatewayClient.connect(
            GatewayEndpoint(server.address), identity, deadlines=deadlines
        ) as c:
            with pytest.raises(CommitStatusError) as timed_out:
                await c.commit_status("mychannel", "ef" * 32)
        async with AsyncGatewayClient.connect(GatewayEndpoint(dead_address), identity) as c:
            with pytest.raises(CommitStatusError) as unavailable:
                await c.commit_status("mychannel", "ef" * 32, timeout=3)
        return timed_out.value, unavailable.value

    timed_out, unavailable = asyncio.run(scenario())
    assert isinstance(timed_out, StatusUnknown)
    assert (timed_out.txid, timed_out.code) == ("ef" * 32, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert unavailable.code is grpc.StatusCode.UNAVAILABLE


def test_async_submit_of_stored_bytes_evaluate_and_errors_over_tls(
    identity: SigningIdentity,
) -> None:
    tls = TlsSet.create()
    servicer = ScriptedGateway()
    with GatewayServer(servicer, ServerTls(tls.server_cert, tls.server_key)) as server:
        endpoint = GatewayEndpoint(
            server.address, tls_root_certs=tls.server_ca.cert_pem, server_name_override=PEER_HOST
        )
        with GatewayClient.connect(endpoint, identity) as blocking:
            stored = blocking.prepare("mychannel", "sagas", "Record", ["k"]).to_bytes()

        async def scenario() -> tuple[str, CommitResult, bytes]:
            async with AsyncGatewayClient.connect(endpoint, identity) as c:
                submitted = await c.submit(stored)
                result = await c.commit_status(submitted.channel, submitted.txid)
                payload = await c.evaluate("mychannel", "sagas", "Get", ["k"])
                servicer.failures["Submit"] = Failure(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "timeout waiting for orderer"
                )
                with pytest.raises(SubmitError) as submit_error:
                    await c.submit(stored)
                assert submit_error.value.txid == submitted.txid
                assert submit_error.value.retryable
                servicer.evaluate_status = 500
                with pytest.raises(EvaluateError):
                    await c.evaluate("mychannel", "sagas", "Get")
                return submitted.txid, result, payload

        txid, result, payload = asyncio.run(scenario())

    assert servicer.submitted == [stored]
    assert result == CommitResult(txid, 0, "VALID", 5)
    assert payload == b"Get|k"
