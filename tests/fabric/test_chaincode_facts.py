"""The saga-facts chaincode as a service in a subprocess, driven over the real shim protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from saga_devnet.shim_peer import ChaincodeClient, KVRead, Simulation
from tests.support.shim import (
    CC_ID,
    CC_NAME,
    MemoryState,
    chaincode_process,
    make_proposal,
    run,
)

T = TypeVar("T")


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with chaincode_process() as (_, addr):
        yield addr


def with_client(address: str, body: Callable[[ChaincodeClient], Awaitable[T]]) -> T:
    async def main() -> T:
        client = ChaincodeClient(CC_NAME, address, package_id=CC_ID)
        await client.connect()
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


def record_of(sim: Simulation) -> dict[str, Any]:
    assert sim.status == 200, sim.message
    rec = json.loads(sim.payload)
    assert isinstance(rec, dict)
    return rec


def refusal(sim: Simulation, code: str) -> str:
    assert sim.status >= 400, (sim.status, sim.payload)
    prefix = code + ":"
    assert sim.message.startswith(prefix), sim.message
    return sim.message[len(prefix) :]


def test_record_payment_writes_the_record_under_its_key(address: str) -> None:
    state = MemoryState()

    async def body(c: ChaincodeClient) -> Simulation:
        return await run(c, state, "RecordPayment", "saga-1/pay/do", "order-7", "1250", "EUR", "c9")

    sim = with_client(address, body)
    rec = record_of(sim)
    assert rec["key"] == "saga-1/pay/do"
    assert rec["kind"] == "payment"
    assert rec["data"] == {
        "order_id": "order-7",
        "amount_cents": 1250,
        "currency": "EUR",
        "customer_id": "c9",
    }
    assert rec["reversed_by"] is None and rec["reverses"] is None
    assert rec["recorded_by"] == "Org1MSP"
    assert rec["recorded_at"] == "2023-11-14T22:13:20Z"
    assert len(rec["txid"]) == 64
    # The key is read (absent) and written: the MVCC guard for exactly-once.
    assert sim.reads == (KVRead("record:saga-1/pay/do", None),)
    assert [w.key for w in sim.writes] == ["record:saga-1/pay/do"]
    assert sim.writes[0].value == sim.payload
    assert sim.event is None


def test_duplicate_key_is_refused_with_the_existing_record(address: str) -> None:
    state = MemoryState()

    async def body(c: ChaincodeClient) -> tuple[Simulation, Simulation, Simulation]:
        first = await run(c, state, "RecordPayment", "k-dup", "order-1", "500", "USD")
        assert state.commit(CC_NAME, first)
        again = await run(c, state, "RecordPayment", "k-dup", "order-1", "500", "USD")
        other = await run(c, state, "RecordPayment", "k-dup", "order-2", "999", "GBP")
        return first, again, other

    first, again, other = with_client(address, body)
    for sim in (again, other):
        assert sim.status == 409
        existing = json.loads(refusal(sim, "ALREADY_RECORDED"))
        assert existing == json.loads(first.payload)
        assert sim.writes == ()
        assert sim.reads == (KVRead("record:k-dup", (1, 0)),)


def test_two_endorsed_before_either_commits_only_one_can_be_valid(address: str) -> None:
    state = MemoryState()

    async def body(c: ChaincodeClient) -> list[Simulation]:
        return list(
            await asyncio.gather(
                run(c, state, "RecordPayment", "k-race", "order-1", "100", "EUR"),
                run(c, state, "RecordPayment", "k-race", "order-1", "100", "EUR"),
            )
        )

    a, b = with_client(address, body)
    assert a.status == b.status == 200
    assert state.commit(CC_NAME, a) is True
    assert state.commit(CC_NAME, b) is False  # MVCC_READ_CONFLICT


def test_two_endorsers_produce_identical_write_sets(address: str) -> None:
    # Two orgs endorse the same proposal on their own connections and peers.
    prop = make_proposal("RecordPayment", "k-det", "order-3", "42", "JPY")

    async def main() -> list[Simulation]:
        sims = []
        for _ in range(2):
            client = ChaincodeClient(CC_NAME, address)
            try:
                sims.append(
                    await client.execute(
                        channel_id="mychannel",
                        txid=prop.txid,
                        signed_proposal=prop.signed,
                        input=prop.input,
                        state=MemoryState(),
                    )
                )
            finally:
                await client.close()
        return sims

    a, b = asyncio.run(main())
    assert a.status == 200
    assert (a.payload, a.reads, a.writes) == (b.payload, b.reads, b.writes)


def test_reversal_has_its_own_key_and_happens_once(address: str) -> None:
    state = MemoryState()

    async def body(c: ChaincodeClient) -> dict[str, Simulation]:
        out: dict[str, Simulation] = {}
        out["pay"] = await run(c, state, "RecordPayment", "s/pay", "order-9", "700", "EUR")
        assert state.commit(CC_NAME, out["pay"])
        out["rev"] = await run(c, state, "ReversePayment", "s/pay/undo", "s/pay", "order rejected")
        assert state.commit(CC_NAME, out["rev"])
        out["rev_again"] = await run(c, state, "ReversePayment", "s/pay/undo", "s/pay")
        out["rev_other_key"] = await run(c, state, "ReversePayment", "s/pay/undo2", "s/pay")
        out["rev_of_rev"] = await run(c, state, "ReversePayment", "s/x", "s/pay/undo")
        out["rev_missing"] = await run(c, state, "ReversePayment", "s/y", "nope")
        out["get_pay"] = await run(c, state, "GetRecord", "s/pay")
        return out

    out = with_client(address, body)
    rev = record_of(out["rev"])
    assert rev["kind"] == "payment_reversal"
    assert rev["reverses"] == "s/pay"
    assert rev["data"]["amount_cents"] == 700 and rev["data"]["reason"] == "order rejected"
    assert sorted(w.key for w in out["rev"].writes) == ["record:s/pay", "record:s/pay/undo"]
    assert {r.key for r in out["rev"].reads} == {"record:s/pay", "record:s/pay/undo"}

    assert json.loads(refusal(out["rev_again"], "ALREADY_RECORDED")) == rev
    original = json.loads(refusal(out["rev_other_key"], "ALREADY_REVERSED"))
    assert original["reversed_by"] == "s/pay/undo"
    assert "payment_reversal" in refusal(out["rev_of_rev"], "NOT_REVERSIBLE")
    assert out["rev_missing"].status == 404
    refusal(out["rev_missing"], "NOT_FOUND")
    assert record_of(out["get_pay"])["reversed_by"] == "s/pay/undo"


def test_get_record_reads_without_writing(address: str) -> None:
    state = MemoryState()

    async def body(c: ChaincodeClient) -> tuple[Simulation, Simulation, Simulation]:
        pay = await run(c, state, "RecordPayment", "q/1", "order-1", "1", "EUR")
        state.commit(CC_NAME, pay)
        found = await run(c, state, "GetRecord", "q/1")
        missing = await run(c, state, "GetRecord", "q/2")
        return pay, found, missing

    pay, found, missing = with_client(address, body)
    assert found.payload == pay.payload and found.writes == ()
    assert (missing.status, missing.payload, missing.writes) == (200, b"", ())
    assert missing.reads == (KVRead("record:q/2", None),)


def test_generic_fact_and_its_reversal(address: str) -> None:
    state = MemoryState()

    async def body(c: ChaincodeClient) -> tuple[Simulation, Simulation, Simulation]:
        fact = await run(c, state, "RecordFact", "f/1", "shipment", '{"parcel": "P-1", "n": 2}')
        state.commit(CC_NAME, fact)
        wrong = await run(c, state, "ReversePayment", "f/1/undo", "f/1")
        undo = await run(c, state, "ReverseFact", "f/1/undo", "f/1", "cancelled")
        return fact, wrong, undo

    fact, wrong, undo = with_client(address, body)
    assert record_of(fact)["data"] == {"type": "shipment", "fact": {"n": 2, "parcel": "P-1"}}
    refusal(wrong, "NOT_REVERSIBLE")
    assert record_of(undo)["kind"] == "fact_reversal"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        ((), "INVALID_ARGUMENT", "no function name"),
        (("Transfer", "x"), "UNKNOWN_FUNCTION", "RecordPayment"),
        (("RecordPayment", "k", "o", "100"), "INVALID_ARGUMENT", "takes (idem_key"),
        (("RecordPayment", "", "o", "100", "EUR"), "INVALID_ARGUMENT", "idem_key must not be"),
        (("RecordPayment", "a b", "o", "100", "EUR"), "INVALID_ARGUMENT", "may only contain"),
        (("RecordPayment", "k" * 300, "o", "1", "EUR"), "INVALID_ARGUMENT", "longer than 256"),
        (("RecordPayment", "k", " ", "100", "EUR"), "INVALID_ARGUMENT", "order_id must not"),
        (("RecordPayment", "k", "o", "12.50", "EUR"), "INVALID_ARGUMENT", "whole number"),
        (("RecordPayment", "k", "o", "-5", "EUR"), "INVALID_ARGUMENT", "whole number"),
        (("RecordPayment", "k", "o", "0", "EUR"), "INVALID_ARGUMENT", "greater than zero"),
        (("RecordPayment", "k", "o", "100", "eur"), "INVALID_ARGUMENT", "ISO 4217"),
        (("ReversePayment", "k", "k"), "INVALID_ARGUMENT", "must differ"),
        (("RecordFact", "k", "Bad Type", "{}"), "INVALID_ARGUMENT", "fact_type"),
        (("RecordFact", "k", "t", "[1]"), "INVALID_ARGUMENT", "JSON object"),
        (("RecordFact", "k", "t", "{oops"), "INVALID_ARGUMENT", "not valid JSON"),
        (("GetRecord",), "INVALID_ARGUMENT", "GetRecord takes (idem_key)"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    address: str, args: tuple[str, ...], code: str, words: str
) -> None:
    state = MemoryState()

    async def body(c: ChaincodeClient) -> Simulation:
        p = make_proposal("x")
        del p.input.args[:]
        p.input.args.extend(a.encode() for a in args)
        return await c.execute(
            channel_id="mychannel",
            txid=p.txid,
            signed_proposal=p.signed,
            input=p.input,
            state=state,
        )

    sim = with_client(address, body)
    assert sim.status == 400
    assert words in refusal(sim, code)
    assert sim.writes == ()


def test_non_utf8_argument_is_refused(address: str) -> None:
    async def body(c: ChaincodeClient) -> Simulation:
        return await run(c, MemoryState(), "GetRecord", b"\xff\xfe")

    refusal(with_client(address, body), "INVALID_ARGUMENT")


def test_many_concurrent_transactions_on_one_stream(address: str) -> None:
    state = MemoryState()
    n = 60

    async def body(c: ChaincodeClient) -> list[Simulation]:
        return list(
            await asyncio.gather(
                *(
                    run(c, state, "RecordPayment", f"conc/{i}", f"order-{i}", str(i + 1), "EUR")
                    for i in range(n)
                )
            )
        )

    sims = with_client(address, body)
    for i, sim in enumerate(sims):
        rec = record_of(sim)
        assert rec["key"] == f"conc/{i}"
        assert rec["data"]["amount_cents"] == i + 1
        assert [w.key for w in sim.writes] == [f"record:conc/{i}"]
    assert len({json.loads(s.payload)["txid"] for s in sims}) == n
