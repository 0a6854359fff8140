"""Peer side of the chaincode shim: Fabric's simulation semantics and stream handling.

A probe chaincode built on fabric-chaincode-python runs in a subprocess and
exercises state calls the saga chaincode does not make. Paths the library can
never produce (a chaincode ERROR message, a chaincode event) are driven by a
raw in-process chaincode speaking the protocol by hand.
"""

from __future__ import annotations

import asyncio
import datetime
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fabric_protos.peer import (
    chaincode_event_pb2,
    chaincode_pb2,
    chaincode_shim_pb2,
    chaincode_shim_pb2_grpc,
    proposal_response_pb2,
)

from saga_devnet.shim_peer import (
    ChaincodeClient,
    ChaincodeStreamTerminated,
    ChaincodeTimeout,
    ChaincodeUnavailable,
    KVRead,
    KVWrite,
    RangeQuery,
    ShimError,
    Simulation,
)
from tests.support.shim import (
    CC_NAME,
    MemoryState,
    chaincode_process,
    free_port,
    run,
)

T = TypeVar("T")
Msg = chaincode_shim_pb2.ChaincodeMessage

PROBE = r"""
import asyncio, logging, os, sys
from fabric_chaincode_python.fabric_shim.interfaces import Chaincode
from fabric_protos.peer import proposal_response_pb2 as pr
from sagafacts_chaincode.server import serve

def ok(payload=b""):
    return pr.Response(status=200, payload=payload)

class Probe(Chaincode):
    async def init(self, stub):
        return ok()

    async def invoke(self, stub):
        fn, *a = [x.decode() for x in stub.cc_input.args]
        if fn == "put_then_get":
            await stub.put_state(a[0], a[1].encode())
            return ok(await stub.get_state(a[0]))
        if fn == "get_twice":
            first = await stub.get_state(a[0])
            await asyncio.sleep(float(a[1]))
            second = await stub.get_state(a[0])
            return ok(first + b"|" + second)
        if fn == "put_empty":
            await stub.put_state(a[0], b"")
            return ok()
        if fn == "put_then_del":
            await stub.put_state(a[0], b"v")
            await stub.delete_state(a[0])
            return ok()
        if fn == "range":
            it = await stub.get_state_by_range(a[0], a[1])
            keys = [kv.key async for kv in it]
            return ok(",".join(keys).encode())
        if fn == "range_first":
            it = await stub.get_state_by_range(a[0], a[1])
            keys = []
            async for kv in it:
                keys.append(kv.key)
                if len(keys) == int(a[2]):
                    break
            await it.aclose()
            return ok(",".join(keys).encode())
        if fn == "page_then_put":
            it = await stub.get_state_by_range_with_pagination(a[0], a[1], int(a[2]), a[3])
            keys = [kv.key async for kv in it]
            reply = await stub.put_state("after-page", b"x")
            return ok((",".join(keys) + "|" + reply.payload.decode()).encode())
        if fn == "private":
            text = await stub.client.handle_get_state("secret", "k", stub.channel_id, stub.tx_id)
            return ok(text)
        if fn == "sleep":
            await asyncio.sleep(float(a[0]))
            return ok(b"slept")
        if fn == "raise":
            raise RuntimeError("boom")
        if fn == "exit":
            os._exit(3)
        return pr.Response(status=400, message="unknown " + fn)

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    ids = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    asyncio.run(serve(Probe(), ids["--id"], ids["--address"]))
"""


@pytest.fixture(scope="module")
def probe_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe_chaincode.py"
    path.write_text(PROBE)
    return path


@pytest.fixture(scope="module")
def probe(probe_script: Path) -> Iterator[str]:
    with chaincode_process([sys.executable, str(probe_script)]) as (_, addr):
        yield addr


def with_client(address: str, body: Callable[[ChaincodeClient], Awaitable[T]]) -> T:
    async def main() -> T:
        client = ChaincodeClient(CC_NAME, address)
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


def seeded(**values: str) -> MemoryState:
    state = MemoryState()
    for i, (k, v) in enumerate(values.items()):
        state.data[(CC_NAME, k)] = (v.encode(), (3, i))
    return state


def test_get_reads_committed_state_not_the_pending_write(probe: str) -> None:
    state = seeded(k="old")

    async def body(c: ChaincodeClient) -> Simulation:
        return await run(c, state, "put_then_get", "k", "new")

    sim = with_client(probe, body)
    # Fabric's GetState never sees the transaction's own writes, and records the read.
    assert sim.payload == b"old"
    assert sim.reads == (KVRead("k", (3, 0)),)
    assert sim.writes == (KVWrite("k", b"new"),)


def test_a_key_read_twice_keeps_the_first_version_seen(probe: str) -> None:
    state = seeded(k="v1")

    async def body(c: ChaincodeClient) -> Simulation:
        task = asyncio.create_task(run(c, state, "get_twice", "k", "0.3"))
        await asyncio.sleep(0.15)
        state.data[(CC_NAME, "k")] = (b"v2", (4, 0))  # a commit lands mid-simulation
        return await task

    sim = with_client(probe, body)
    assert sim.payload == b"v1|v2"
    assert sim.reads == (KVRead("k", (3, 0)),)
    assert not state.mvcc_ok(CC_NAME, sim)


def test_empty_value_and_delete_are_deletes(probe: str) -> None:
    async def body(c: ChaincodeClient) -> tuple[Simulation, Simulation]:
        st = seeded(a="1", b="2")
        return await run(c, st, "put_empty", "a"), await run(c, st, "put_then_del", "b")

    empty, deleted = with_client(probe, body)
    assert empty.writes == (KVWrite("a", b"", is_delete=True),)
    assert deleted.writes == (KVWrite("b", b"", is_delete=True),)
    assert empty.reads == deleted.reads == ()


def test_range_query_streams_batches_and_records_range_info(probe: str) -> None:
    state = seeded(**{f"r{i:03d}": str(i) for i in range(250)}, s="other")

    async def body(c: ChaincodeClient) -> tuple[Simulation, Simulation]:
        full = await run(c, state, "range", "r", "s")
        part = await run(c, state, "range_first", "r", "", "150")
        return full, part

    full, part = with_client(probe, body)
    keys = full.payload.decode().split(",")
    assert keys == [f"r{i:03d}" for i in range(250)]  # 3 batches of <= 100
    assert full.reads == ()
    (rq,) = full.range_queries
    assert (rq.start_key, rq.end_key, rq.itr_exhausted) == ("r", "s", True)
    assert [r.key for r in rq.reads] == keys
    assert rq.reads[7] == KVRead("r007", (3, 7))

    assert part.payload.decode().split(",") == keys[:150]
    (rq2,) = part.range_queries
    assert rq2 == RangeQuery("r", "r199", False, rq2.reads)
    assert len(rq2.reads) == 200  # what the peer delivered: two batches


def test_paginated_query_then_write_is_refused(probe: str) -> None:
    state = seeded(**{f"p{i}": "x" for i in range(5)})

    async def body(c: ChaincodeClient) -> Simulation:
        return await run(c, state, "page_then_put", "p", "", "2", "p1")

    sim = with_client(probe, body)
    keys, error = sim.payload.decode().split("|")
    assert keys == "p1,p2"
    assert error.startswith("PUT_STATE failed: transaction ID: ")
    assert "paginated query" in error
    assert sim.writes == () and sim.range_queries == ()


def test_peer_refusal_reaches_the_chaincode_as_error(probe: str) -> None:
    async def body(c: ChaincodeClient) -> Simulation:
        return await run(c, MemoryState(), "private")

    sim = with_client(probe, body)
    assert sim.payload.startswith(b"GET_STATE failed: transaction ID: ")
    assert b"private data collections are not supported" in sim.payload


def test_concurrent_transactions_complete_independently(probe: str) -> None:
    async def body(c: ChaincodeClient) -> list[Simulation]:
        st = MemoryState()
        return list(
            await asyncio.gather(
                run(c, st, "sleep", "0.5"),
                *(run(c, st, "put_then_get", f"k{i}", str(i)) for i in range(20)),
            )
        )

    slow, *fast = with_client(probe, body)
    assert slow.payload == b"slept"
    for i, sim in enumerate(fast):
        assert sim.writes == (KVWrite(f"k{i}", str(i).encode()),)


def test_chaincode_that_never_answers_times_out(probe: str) -> None:
    async def body(c: ChaincodeClient) -> tuple[type[BaseException], Simulation]:
        st = MemoryState()
        with pytest.raises(ChaincodeTimeout) as info:
            await run(c, st, "raise", timeout=1.0)
        # The stream is still usable afterwards.
        return info.type, await run(c, st, "put_then_get", "x", "1")

    _, after = with_client(probe, body)
    assert after.status == 200


def test_duplicate_txid_in_flight_is_refused(probe: str) -> None:
    async def body(c: ChaincodeClient) -> None:
        st = MemoryState()
        first = asyncio.create_task(run(c, st, "sleep", "0.3", txid="ab" * 32))
        await asyncio.sleep(0.1)
        with pytest.raises(ShimError, match="exists"):
            await run(c, st, "sleep", "0", txid="ab" * 32)
        assert (await first).status == 200

    with_client(probe, body)


def test_stream_loss_fails_in_flight_and_reconnects_after_restart(probe_script: Path) -> None:
    port = free_port()
    cmd = [sys.executable, str(probe_script)]

    async def main() -> Simulation:
        client = ChaincodeClient(CC_NAME, f"127.0.0.1:{port}", dial_timeout=2)
        try:
            with chaincode_process(cmd, port=port), pytest.raises(ChaincodeStreamTerminated):
                await run(client, MemoryState(), "exit", timeout=10)
            assert not client.connected
            with pytest.raises(ChaincodeUnavailable):
                await run(client, MemoryState(), "sleep", "0")
            with chaincode_process(cmd, port=port):
                return await run(client, MemoryState(), "sleep", "0")
        finally:
            await client.close()

    assert asyncio.run(main()).payload == b"slept"


def test_wrong_package_id_is_not_accepted(probe: str) -> None:
    async def main() -> None:
        client = ChaincodeClient(CC_NAME, probe, package_id="sagafacts_2.0:ffff")
        with pytest.raises(ChaincodeUnavailable, match="expected package id"):
            await client.connect()
        await client.close()

    asyncio.run(main())


# A chaincode written by hand, for replies fabric-chaincode-python never sends.


class RawChaincode(chaincode_shim_pb2_grpc.ChaincodeServicer):
    async def Connect(
        self,
        request_iterator: AsyncIterator[chaincode_shim_pb2.ChaincodeMessage],
        context: grpc.aio.ServicerContext[
            chaincode_shim_pb2.ChaincodeMessage, chaincode_shim_pb2.ChaincodeMessage
        ],
    ) -> None:
        cc_id = chaincode_pb2.ChaincodeID(name="raw:1")
        await context.write(Msg(type=Msg.REGISTER, payload=cc_id.SerializeToString()))
        async for msg in request_iterator:
            if msg.type != Msg.TRANSACTION:
                continue
            fn = chaincode_pb2.ChaincodeInput.FromString(msg.payload).args[0]
            if fn == b"error":
                await context.write(
                    Msg(
                        type=Msg.ERROR,
                        payload=b"bad things",
                        txid=msg.txid,
                        channel_id=msg.channel_id,
                    )
                )
            else:
                event = chaincode_event_pb2.ChaincodeEvent(event_name="Recorded", payload=b"{}")
                resp = proposal_response_pb2.Response(status=200, payload=b"ok")
                await context.write(
                    Msg(
                        type=Msg.COMPLETED,
                        payload=resp.SerializeToString(),
                        chaincode_event=event,
                        txid=msg.txid,
                        channel_id=msg.channel_id,
                    )
                )


def test_chaincode_error_message_and_event() -> None:
    async def main() -> tuple[Simulation, Simulation]:
        server = grpc.aio.server()
        chaincode_shim_pb2_grpc.add_ChaincodeServicer_to_server(RawChaincode(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = ChaincodeClient(CC_NAME, f"127.0.0.1:{port}", keepalive=0.05)
        try:
            err = await run(client, MemoryState(), "error")
            await asyncio.sleep(0.2)  # keepalives flow without disturbing anything
            ok = await run(client, MemoryState(), "event")
            assert client.registered_id == "raw:1"
            return err, ok
        finally:
            await client.close()
            await server.stop(0)

    err, ok = asyncio.run(main())
    assert err.status == 500
    assert err.message == "transaction returned with failure: bad things"
    assert ok.status == 200 and ok.payload == b"ok"
    assert ok.event is not None
    event = chaincode_event_pb2.ChaincodeEvent.FromString(ok.event)
    # The peer stamps the event with the chaincode name and txid, as Fabric does.
    assert (event.chaincode_id, event.event_name, event.payload) == (CC_NAME, "Recorded", b"{}")
    assert len(event.tx_id) == 64


def test_unreachable_chaincode_is_unavailable() -> None:
    async def main() -> None:
        client = ChaincodeClient(CC_NAME, f"127.0.0.1:{free_port()}", dial_timeout=1)
        with pytest.raises(ChaincodeUnavailable):
            await run(client, MemoryState(), "anything")
        await client.close()

    asyncio.run(main())


# TLS and mutual TLS, as a peer dials a chaincode whose connection.json requires them.


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("tlsca", ca_key, None, ca=True)
    files: dict[str, Path] = {}
    for name, obj in [("ca.crt", ca)]:
        files[name] = d / name
        files[name].write_bytes(_pem(obj))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{who}.key"] = d / f"{who}.key"
        files[f"{who}.key"].write_bytes(_pem(key))
        files[f"{who}.crt"] = d / f"{who}.crt"
        files[f"{who}.crt"].write_bytes(_pem(_cert(who, key, ("tlsca", ca_key))))
    return files


def test_mutual_tls(tls_files: dict[str, Path]) -> None:
    f = tls_files
    extra = ["--tls-cert", str(f["server.crt"]), "--tls-key", str(f["server.key"])]
    extra += ["--client-ca", str(f["ca.crt"])]
    with chaincode_process(extra=extra) as (_, addr):
        address = addr.replace("127.0.0.1", "localhost")

        async def main() -> Simulation:
            anonymous = ChaincodeClient(
                CC_NAME, address, tls_root_cert=f["ca.crt"].read_bytes(), dial_timeout=2
            )
            with pytest.raises(ChaincodeUnavailable):
                await anonymous.connect()
            await anonymous.close()
            client = ChaincodeClient(
                CC_NAME,
                address,
                tls_root_cert=f["ca.crt"].read_bytes(),
                client_cert=f["client.crt"].read_bytes(),
                client_key=f["client.key"].read_bytes(),
            )
            try:
                return await run(client, MemoryState(), "GetRecord", "nothing-here")
            finally:
                await client.close()

        sim = asyncio.run(main())
    assert (sim.status, sim.payload) == (200, b"")
