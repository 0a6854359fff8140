"""Differential test: one scripted sequence of ledger calls against the devnet and against a
real Fabric 2.5 network, each answer reduced to a normalised observation, and the two lists
compared. Where they disagree, real Fabric is right: a difference is fixed in the devnet or
accepted in KNOWN_DIFFERENCES below (and in tools/saga_devnet/README.md, "Where the devnet differs
from Fabric"). Every real error text is also fed to the product's fault classifier.

Both ledgers run the real sagafacts chaincode under the channel's MAJORITY policy (both orgs
endorse). Calls go through saga_devnet.rawclient.RawGateway so that the sequence can build
requests the product never would (one org's endorsement, tampered signatures, a resubmitted
envelope, the wrong channel).

On failure the path of a JSON dump of both observation lists is printed.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from saga.adapters.fabric import crypto
from saga.core.ledger_faults import FaultKind, Operation, classify
from saga_devnet.chaincode_launcher import start_chaincode, stop
from saga_devnet.protos import (
    common_pb2,
    gateway_pb2,
    identities_pb2,
    ledger_pb2,
    transaction_pb2,
)
from saga_devnet.rawclient import Proposal, RawGateway, error_details
from saga_fabricnet import nodes
from tests.support.devnet import Devnet
from tests.support.fabricnet import (
    TEST_BATCH_TIMEOUT,
    RealLedgerNet,
)
from tests.support.ports import free_port

CC = "sagafacts"
DEVNET_CC_ID = "sagafacts_1.0:devnet"
NO_CHANNEL = "nochannel"
NO_CHAINCODE = "nosuchcc"
ORG1, ORG2 = "Org1MSP", "Org2MSP"
# The real peers run with gossip aliveExpirationTimeout 5 s (saga_fabricnet.nodes); the
# devnet's knob is set to the same so that one polling loop sees the same phases on both.
GOSSIP_EXPIRY = 5.0
# How long the sequence waits for the other org's gateway to stop planning with a down peer.
GOSSIP_BUDGET = 30.0
CALL_TIMEOUT = 15.0

Observation = dict[str, Any]


# -- the two ledgers -------------------------------------------------------------------------


class Ledger(ABC):
    """One side of the comparison: clients plus the outages the sequence needs."""

    name: str
    channel: str = "mychannel"
    package_id: str

    def __init__(self) -> None:
        self._clients: list[RawGateway] = []

    @abstractmethod
    def _client(self, org: int) -> RawGateway: ...

    def client(self, org: int = 1, channel: str | None = None) -> RawGateway:
        gw = self._client(org)
        gw.channel = channel or self.channel
        self._clients.append(gw)
        return gw

    def close(self) -> None:
        for gw in self._clients:
            gw.close()
        self._clients.clear()

    @abstractmethod
    def chaincode_down(self) -> None: ...

    @abstractmethod
    def chaincode_up(self) -> None: ...

    @abstractmethod
    def org2_peer_down(self) -> None: ...

    @abstractmethod
    def orderers_down(self) -> None: ...


class DevnetLedger(Ledger):
    name = "devnet"
    package_id = DEVNET_CC_ID

    def __init__(self, devnet: Devnet, chaincode_address: str, log: Path) -> None:
        super().__init__()
        self.devnet = devnet
        self.address = chaincode_address
        self.log = log
        self.proc = start_chaincode(chaincode_address, DEVNET_CC_ID, log)

    def _client(self, org: int) -> RawGateway:
        return self.devnet.client(org)

    def chaincode_down(self) -> None:
        # SIGKILL, as the real side's kill: no goodbye on the shim stream.
        self.proc.kill()
        self.proc.wait()

    def chaincode_up(self) -> None:
        self.proc = start_chaincode(self.address, DEVNET_CC_ID, self.log)

    def org2_peer_down(self) -> None:
        self.devnet.set_faults(org_down=[ORG2], org_down_expiry=GOSSIP_EXPIRY)

    def orderers_down(self) -> None:
        self.devnet.set_faults(orderer_down=True)

    def shutdown(self) -> None:
        self.close()
        stop(self.proc)


class RealLedger(Ledger):
    name = "fabric"

    def __init__(self, net: RealLedgerNet) -> None:
        super().__init__()
        self.net = net
        self.network = net.network
        self.channel = net.channel
        self.package_id = self.network.state.package_id

    def _client(self, org: int) -> RawGateway:
        o = self.network.org(org)
        return RawGateway.for_user(
            self.network.layout.org_dir(o),
            msp_id=o.msp_id,
            port=self.network.state.ports.peers[org].listen,
            channel=self.channel,
        )

    def chaincode_down(self) -> None:
        self.network.kill(nodes.CHAINCODE)

    def chaincode_up(self) -> None:
        self.network.start(nodes.CHAINCODE)

    def org2_peer_down(self) -> None:
        self.network.kill("peer0.org2")

    def orderers_down(self) -> None:
        for orderer in self.network.orderers:
            self.network.kill(orderer)


# -- observing -------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One call's normalised observation plus, for the classifier, its raw texts."""

    observation: Observation
    operation: Operation | None = None
    code: str | None = None
    message: str = ""
    details: list[str] = field(default_factory=list)
    # What the case means for a saga step; None: not an error the classifier must read.
    kind: FaultKind | None = None


class Recorder:
    """Runs the calls of one side and keeps their observations in order."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.records: list[Recorded] = []
        self._txids: dict[str, str] = {}
        self.base_height = 0

    # -- normalisation: what differs between any two networks, not between behaviours --------

    def label(self, txid: str, name: str) -> None:
        self._txids[txid] = name

    def norm(self, text: str) -> str:
        for txid, name in self._txids.items():
            text = text.replace(txid, f"<txid:{name}>")
        text = text.replace(self.ledger.package_id, "<package_id>")
        text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z", "<time>", text)
        text = re.sub(
            r"(?:\d{1,3}(?:\.\d{1,3}){3}|localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
            r"\.example\.com):\d+",
            "<addr>",
            text,
        )
        text = re.sub(r"\b[0-9a-f]{65,}\b", "<hex>", text)
        return re.sub(r"\b[0-9a-f]{64}\b", "<hash>", text)

    # -- calls ---------------------------------------------------------------------------------

    def call(
        self,
        case: str,
        operation: Operation,
        fn: Callable[[], Any],
        *,
        kind: FaultKind | None = None,
        ok: Callable[[Any], Observation] | None = None,
    ) -> Any:
        """Run fn; record its error, or `ok(result)` if it returned. Returns the result or
        None on error."""
        obs: Observation = {"case": case}
        rec = Recorded(obs, operation, kind=kind)
        try:
            result = fn()
        except grpc.RpcError as err:
            rec.code = err.code().name
            rec.message = err.details() or ""
            rec.details = [d.message for d in error_details(err)]
            obs.update(
                code=rec.code,
                message=self.norm(rec.message),
                details=[
                    {"msp_id": d.msp_id, "address": self.norm(d.address), "message": self.norm(m)}
                    for d, m in zip(error_details(err), rec.details, strict=True)
                ],
            )
            self.records.append(rec)
            return None
        obs["code"] = "OK"
        if ok is not None:
            obs.update(ok(result))
        self.records.append(rec)
        return result

    def note(self, case: str, **values: Any) -> None:
        """An observation that is not one call's answer (e.g. what a block says)."""
        self.records.append(Recorded({"case": case, **values}))

    def observations(self) -> list[Observation]:
        return [r.observation for r in self.records]


def _code_name(code: int) -> str:
    return str(transaction_pb2.TxValidationCode.Name(code))


def height(gw: RawGateway) -> int:
    resp = gw.evaluate("qscc", "GetChainInfo", gw.channel, timeout=CALL_TIMEOUT)
    return int(ledger_pb2.BlockchainInfo.FromString(resp.payload).height)


def block_code(gw: RawGateway, number: int, txid: str) -> list[str]:
    """The TRANSACTIONS_FILTER codes of `txid`'s entries in block `number`."""
    resp = gw.evaluate("qscc", "GetBlockByNumber", gw.channel, str(number), timeout=CALL_TIMEOUT)
    block = common_pb2.Block.FromString(resp.payload)
    flags = block.metadata.metadata[common_pb2.BlockMetadataIndex.Value("TRANSACTIONS_FILTER")]
    out = []
    for n, raw in enumerate(block.data.data):
        payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(raw).payload)
        chdr = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        if chdr.tx_id == txid:
            out.append(_code_name(flags[n]))
    return out


def wait_height(gw: RawGateway, above: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        h = height(gw)
        if h > above or time.monotonic() > deadline:
            return h
        time.sleep(0.1)


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


# -- the sequence ----------------------------------------------------------------------------


def run_sequence(r: Recorder) -> None:
    """The scripted calls, the same on both sides, recorded into `r`. Outages come last,
    each leaving the ledger as the next case needs it."""
    ledger = r.ledger
    gw = ledger.client(1)
    ch = ledger.channel
    E, S, C, V = Operation.ENDORSE, Operation.SUBMIT, Operation.COMMIT_STATUS, Operation.EVALUATE
    REFUSED, REJECTED = FaultKind.REFUSED, FaultKind.REJECTED
    MISCONFIGURED, UNAVAILABLE = FaultKind.MISCONFIGURED, FaultKind.UNAVAILABLE

    r.base_height = height(gw)

    def proposal(name: str, fn: str, *args: str | bytes) -> Proposal:
        p = gw.proposal(CC, fn, *args)
        r.label(p.txid, name)
        return p

    def blk(number: int) -> int:
        return number - r.base_height

    def committed(case: str, p: Proposal, env: Any) -> None:
        """Submit, then CommitStatus, and qscc's view of the transaction."""
        r.call(f"{case}.submit", S, lambda: gw.submit(p.txid, env, timeout=CALL_TIMEOUT))
        r.call(
            f"{case}.commit_status",
            C,
            lambda: gw.commit_status(p.txid, timeout=CALL_TIMEOUT),
            ok=lambda res: {"validation": _code_name(res[0]), "block": blk(res[1])},
        )
        r.call(
            f"{case}.qscc_get_transaction",
            V,
            lambda: gw.evaluate("qscc", "GetTransactionByID", ch, p.txid, timeout=CALL_TIMEOUT),
            ok=lambda res: {
                "status": res.status,
                "validation": _code_name(
                    transaction_pb2.ProcessedTransaction.FromString(res.payload).validationCode
                ),
            },
        )

    def endorse(case: str, p: Proposal, *, kind: FaultKind | None = None, **kw: Any) -> Any:
        return r.call(
            f"{case}.endorse",
            E,
            lambda: gw.endorse(p, timeout=CALL_TIMEOUT, **kw),
            kind=kind,
            ok=lambda env: {"endorsements": _endorsers(env)},
        )

    def evaluate(case: str, fn: str, *args: str, kind: FaultKind | None = None) -> Any:
        return r.call(
            f"{case}.evaluate",
            V,
            lambda: gw.evaluate(CC, fn, *args, timeout=CALL_TIMEOUT),
            kind=kind,
            ok=lambda res: {"status": res.status, "payload": r.norm(res.payload.decode())},
        )

    def endorsed(case: str, p: Proposal, **kw: Any) -> Any:
        """An endorsement the sequence builds on: without it the rest cannot run."""
        env = endorse(case, p, **kw)
        assert env is not None, f"{ledger.name}: {case} was not endorsed: {r.records[-1]}"
        return env

    def record(case: str, fn: str, *args: str) -> Proposal:
        p = proposal(case, fn, *args)
        committed(case, p, endorsed(case, p))
        return p

    # A success: record, then read it back.
    record("record_fact", "RecordFact", "fact-1", "order.placed", '{"order":"o-1"}')
    evaluate("get_record", "GetRecord", "fact-1")
    evaluate("get_record_missing", "GetRecord", "no-such-key")
    record("record_payment", "RecordPayment", "pay-1", "o-1", "1250", "EUR", "c-1")

    # Every chaincode refusal, at Endorse (the local peer simulates first and says no).
    refusals: list[tuple[str, str, tuple[str, ...]]] = [
        ("unknown_function", "NoSuchFunction", ("x",)),
        ("no_function", "", ()),
        ("invalid_arity", "RecordFact", ("only-key",)),
        ("invalid_key", "RecordFact", ("bad key!", "t", "{}")),
        ("invalid_amount", "RecordPayment", ("pay-2", "o-2", "12.50", "EUR")),
        ("invalid_currency", "RecordPayment", ("pay-2", "o-2", "1250", "eur")),
        ("invalid_fact_json", "RecordFact", ("fact-2", "t", "[1]")),
        ("already_recorded", "RecordFact", ("fact-1", "order.placed", "{}")),
        ("not_found", "ReverseFact", ("rev-1", "no-such-key", "why")),
        ("not_reversible", "ReversePayment", ("rev-1", "fact-1", "why")),
    ]
    for case, fn, args in refusals:
        endorse(f"refusal.{case}", proposal(case, fn, *args), kind=REFUSED)
    # Arguments that are not UTF-8 (the raw client sends bytes as they are).
    endorse(
        "refusal.not_utf8",
        proposal("not_utf8", "RecordFact", b"\xff\xfe", "t", "{}"),
        kind=REFUSED,
    )
    record("reverse_fact", "ReverseFact", "rev-fact-1", "fact-1", "cancelled")
    record("reverse_payment", "ReversePayment", "rev-pay-1", "pay-1", "refund")
    later: list[tuple[str, str, tuple[str, ...]]] = [
        ("already_reversed", "ReverseFact", ("rev-fact-2", "fact-1", "again")),
        # A retried reversal finds its own record first.
        ("reversal_already_recorded", "ReverseFact", ("rev-fact-1", "fact-1", "again")),
        ("reversal_of_itself", "ReversePayment", ("pay-3", "pay-3")),
    ]
    for case, fn, args in later:
        endorse(f"refusal.{case}", proposal(case, fn, *args), kind=REFUSED)
    # A refusal at Evaluate is final on the first peer (not retried on the other org's).
    evaluate("refusal.invalid_key", "GetRecord", "bad key!", kind=REFUSED)
    evaluate("refusal.get_record_arity", "GetRecord", kind=REFUSED)

    # qscc: the chain's height and a transaction that is not there.
    r.call(
        "qscc.chain_info",
        V,
        lambda: gw.evaluate("qscc", "GetChainInfo", ch, timeout=CALL_TIMEOUT),
        ok=lambda res: {
            "height_delta": ledger_pb2.BlockchainInfo.FromString(res.payload).height - r.base_height
        },
    )
    missing = "0" * 64
    r.label(missing, "missing")
    r.call(
        "qscc.get_transaction_missing",
        V,
        lambda: gw.evaluate("qscc", "GetTransactionByID", ch, missing, timeout=CALL_TIMEOUT),
    )

    # MVCC_READ_CONFLICT: two proposals for one key endorsed before either commits.
    pa = proposal("mvcc_a", "RecordFact", "mvcc-1", "t", '{"n":1}')
    pb = proposal("mvcc_b", "RecordFact", "mvcc-1", "t", '{"n":2}')
    env_a = endorsed("mvcc_a", pa)
    env_b = endorsed("mvcc_b", pb)
    committed("mvcc_a", pa, env_a)
    committed("mvcc_b", pb, env_b)

    # The same envelope submitted twice: ordered twice, the second marked DUPLICATE_TXID,
    # and CommitStatus keeps reporting the first commit.
    pd = proposal("dup", "RecordFact", "dup-1", "t", "{}")
    env_d = endorsed("dup", pd)
    committed("dup", pd, env_d)
    before = height(gw)
    r.call("dup.resubmit", S, lambda: gw.submit(pd.txid, env_d, timeout=CALL_TIMEOUT))
    after = wait_height(gw, before)
    r.note(
        "dup.resubmitted_block",
        block_delta=blk(before) if after > before else None,
        codes=block_code(gw, before, pd.txid) if after > before else [],
    )
    r.call(
        "dup.commit_status_after_resubmit",
        C,
        lambda: gw.commit_status(pd.txid, timeout=CALL_TIMEOUT),
        ok=lambda res: {"validation": _code_name(res[0]), "block": blk(res[1])},
    )
    # Endorsing a proposal whose txid is already on the ledger.
    endorse("dup.endorse_again", pd, kind=REJECTED)

    # Endorsement policy failure: only Org1's endorsement (the gateway honours
    # endorsing_organizations), which MAJORITY of two orgs does not accept.
    pp = proposal("policy", "RecordFact", "policy-1", "t", "{}")
    env_p = endorsed("policy", pp, orgs=(ORG1,))
    committed("policy", pp, env_p)

    # Tampered signatures: the client's signature over the envelope (orderer's Writers
    # policy) and over the proposal (the endorser's check).
    pt = proposal("tampered_envelope", "RecordFact", "tamper-1", "t", "{}")
    env_t = endorsed("tampered_envelope", pt)
    env_t.signature = flip_last_byte(env_t.signature)
    r.call(
        "tampered_envelope.submit",
        S,
        lambda: gw.submit(pt.txid, env_t, timeout=CALL_TIMEOUT),
        kind=REJECTED,
    )
    ps = proposal("tampered_proposal", "RecordFact", "tamper-2", "t", "{}")
    ps.signed.signature = flip_last_byte(ps.signed.signature)
    endorse("tampered_proposal", ps, kind=REJECTED)

    # A CommitStatus request whose signature does not verify: the channel's Readers policy.
    def bad_commit_status() -> Any:
        raw = gateway_pb2.CommitStatusRequest(
            transaction_id=pt.txid, channel_id=ch, identity=gw.creator
        ).SerializeToString()
        signature = flip_last_byte(crypto.sign(gw.key, raw))
        return gw.stub.CommitStatus(
            gateway_pb2.SignedCommitStatusRequest(request=raw, signature=signature),
            timeout=CALL_TIMEOUT,
        )

    r.call("tampered_commit_status", C, bad_commit_status, kind=REJECTED)

    # Unknown channel, on each call.
    lost = ledger.client(1, channel=NO_CHANNEL)
    pc = lost.proposal(CC, "RecordFact", "chan-1", "t", "{}")
    r.label(pc.txid, "no_channel")
    r.call(
        "no_channel.endorse",
        E,
        lambda: lost.endorse(pc, timeout=CALL_TIMEOUT),
        kind=MISCONFIGURED,
    )
    r.call(
        "no_channel.evaluate",
        V,
        lambda: lost.evaluate(CC, "GetRecord", "fact-1", timeout=CALL_TIMEOUT),
        kind=MISCONFIGURED,
    )
    pn = proposal("no_channel_submit", "RecordFact", "chan-2", "t", "{}")
    env_n = endorsed("no_channel_submit", pn)
    r.call(
        "no_channel.submit",
        S,
        lambda: lost.submit(pn.txid, env_n, timeout=CALL_TIMEOUT),
        kind=MISCONFIGURED,
    )
    r.call(
        "no_channel.commit_status",
        C,
        lambda: lost.commit_status(pn.txid, timeout=CALL_TIMEOUT),
        kind=MISCONFIGURED,
    )

    # Unknown chaincode.
    pu = gw.proposal(NO_CHAINCODE, "RecordFact", "cc-1", "t", "{}")
    r.label(pu.txid, "no_chaincode")
    r.call(
        "no_chaincode.endorse",
        E,
        lambda: gw.endorse(pu, timeout=CALL_TIMEOUT),
        kind=MISCONFIGURED,
    )
    r.call(
        "no_chaincode.evaluate",
        V,
        lambda: gw.evaluate(NO_CHAINCODE, "GetRecord", "fact-1", timeout=CALL_TIMEOUT),
        kind=MISCONFIGURED,
    )

    # Endorsed now, submitted once the orderers are down (last case).
    po = proposal("orderers_down", "RecordFact", "orderer-1", "t", "{}")
    env_o = endorsed("orderers_down", po)

    # Outage: the chaincode process is down.
    ledger.chaincode_down()
    endorse(
        "chaincode_down",
        proposal("chaincode_down", "RecordFact", "ccd-1", "t", "{}"),
        kind=UNAVAILABLE,
    )
    evaluate("chaincode_down", "GetRecord", "fact-1", kind=UNAVAILABLE)
    ledger.chaincode_up()
    record("chaincode_back", "RecordFact", "ccb-1", "t", "{}")

    # Outage: the other org's peer is down. First answer, then each new answer until the
    # gateway no longer plans with it (gossip expiry), within GOSSIP_BUDGET.
    def evaluate_on_org2(case: str) -> None:
        r.call(
            case,
            V,
            lambda: gw.evaluate(CC, "GetRecord", "fact-1", orgs=(ORG2,), timeout=CALL_TIMEOUT),
            kind=UNAVAILABLE,
        )

    ledger.org2_peer_down()
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + GOSSIP_BUDGET
    n = 0
    while time.monotonic() < deadline:
        # Cases are named by phase (each new answer), not by attempt: how many polls a
        # phase lasts is timing, not behaviour.
        p = proposal(f"org2_down_{n}", "RecordFact", f"org2-{n}", "t", "{}")
        endorse(f"org2_down.phase{len(seen)}", p, kind=UNAVAILABLE)
        last = r.records[-1].observation
        answer = (str(last.get("code")), str(last.get("message")))
        if seen and answer == seen[-1]:
            r.records.pop()  # the same answer again
        else:
            seen.append(answer)
        if n == 0:
            # Evaluate aimed at the down org, while gossip still lists its peer.
            evaluate_on_org2("org2_down.evaluate_on_org2_before_expiry")
        if answer[0] == "FAILED_PRECONDITION" and "no combination" in answer[1]:
            break
        n += 1
        time.sleep(0.25)
    # And once the gateway no longer plans with it.
    evaluate_on_org2("org2_down.evaluate_on_org2_after_expiry")
    # The local peer still evaluates alone.
    evaluate("org2_down", "GetRecord", "fact-1")

    # Outage: every orderer is down; the envelope endorsed before is submitted.
    ledger.orderers_down()
    r.call(
        "orderers_down.submit",
        S,
        lambda: gw.submit(po.txid, env_o, timeout=CALL_TIMEOUT),
        kind=UNAVAILABLE,
    )


def _endorsers(env: Any) -> list[str]:
    """The MSP ids that endorsed a prepared envelope."""
    payload = common_pb2.Payload.FromString(env.payload)
    tx = transaction_pb2.Transaction.FromString(payload.data)
    cap = transaction_pb2.ChaincodeActionPayload.FromString(tx.actions[0].payload)
    return sorted(
        identities_pb2.SerializedIdentity.FromString(e.endorser).mspid
        for e in cap.action.endorsements
    )


# -- known differences -----------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A difference accepted on purpose: in case `case`, field `key` reads `devnet` on the
    devnet and `fabric` on real Fabric. Any other difference fails."""

    case: str
    key: str
    devnet: Any
    fabric: Any
    why: str


_ORDERER_REFUSED = {
    "msp_id": "OrdererMSP",
    "address": "<addr>",
    "message": 'rpc error: code = Unavailable desc = connection error: desc = "transport: Error '
    'while dialing: dial tcp <addr>: connect: connection refused"',
}

# Each entry is also listed in tools/saga_devnet/README.md, "Where the devnet differs from Fabric".
KNOWN_DIFFERENCES: list[Known] = [
    Known(
        "orderers_down.submit",
        "details",
        devnet=[_ORDERER_REFUSED],
        fabric=[_ORDERER_REFUSED] * 3,
        why="the devnet has one orderer in its channel config, the real network three "
        "(etcdraft); the gateway tries each and lists each refusal",
    ),
]


def compare(devnet: list[Observation], fabric: list[Observation]) -> list[str]:
    """Readable differences that KNOWN_DIFFERENCES does not accept."""
    problems: list[str] = []
    dcases = [o["case"] for o in devnet]
    fcases = [o["case"] for o in fabric]
    if dcases != fcases:
        problems.append(
            "the sequences differ in their cases:\n"
            + "\n".join(difflib.unified_diff(dcases, fcases, "devnet", "fabric", lineterm=""))
        )
    fby = {o["case"]: o for o in fabric}
    used: set[int] = set()
    for d in devnet:
        f = fby.get(d["case"])
        if f is None or d == f:
            continue
        for key in sorted(set(d) | set(f)):
            dv, fv = d.get(key), f.get(key)
            if dv == fv:
                continue
            known = [
                n
                for n, k in enumerate(KNOWN_DIFFERENCES)
                if k.case == d["case"] and k.key == key and k.devnet == dv and k.fabric == fv
            ]
            if known:
                used.update(known)
                continue
            dtext = json.dumps(dv, indent=1, sort_keys=True).splitlines()
            ftext = json.dumps(fv, indent=1, sort_keys=True).splitlines()
            diff = "\n".join(difflib.unified_diff(dtext, ftext, "devnet", "fabric", lineterm=""))
            problems.append(f"{d['case']} [{key}]:\n{diff}")
    # A known difference that is gone must leave the list (and the README) too.
    for n, k in enumerate(KNOWN_DIFFERENCES):
        if n not in used:
            problems.append(f"known difference no longer seen, remove it: {k.case} [{k.key}]")
    return problems


# -- fixtures and tests ----------------------------------------------------------------------


@dataclass
class Runs:
    devnet: Recorder
    fabric: Recorder
    dump: Path
    seconds: dict[str, float]
    fabric_version: str


def write_dump(path: Path, devnet: Recorder, fabric: Recorder, seconds: dict[str, float]) -> None:
    path.write_text(
        json.dumps(
            {
                "devnet": devnet.observations(),
                "fabric": fabric.observations(),
                # The texts as Fabric wrote them, before normalisation (what the classifier reads).
                "fabric_raw": [
                    {
                        "case": rec.observation["case"],
                        "code": rec.code,
                        "message": rec.message,
                        "details": rec.details,
                    }
                    for rec in fabric.records
                    if rec.code is not None
                ],
                "seconds": seconds,
            },
            indent=2,
        )
    )


@pytest.fixture(scope="module")
def runs(
    real_sagafacts_net: RealLedgerNet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runs]:
    out = tmp_path_factory.mktemp("differential")
    address = f"127.0.0.1:{free_port()}"
    devnet = Devnet(
        out / "devnet",
        {
            # The real network's block cutting, so that blocks hold the same transactions.
            "batch_timeout": TEST_BATCH_TIMEOUT,
            "max_message_count": 10,
            "chaincodes": {
                CC: {
                    "address": address,
                    "package_id": DEVNET_CC_ID,
                    "policy": "MAJORITY Endorsement",
                }
            },
        },
    )
    dev = DevnetLedger(devnet, address, out / "chaincode.log")
    real = RealLedger(real_sagafacts_net)
    dev_run, real_run = Recorder(dev), Recorder(real)
    seconds: dict[str, float] = {}
    dump = out / "observations.json"
    try:
        devnet.start()
        try:
            for run in (dev_run, real_run):
                started = time.monotonic()
                try:
                    run_sequence(run)
                finally:
                    run.ledger.close()
                seconds[run.ledger.name] = time.monotonic() - started
        except Exception as exc:
            # What both sides answered up to the failure is the first thing to read.
            write_dump(dump, dev_run, real_run, seconds)
            raise RuntimeError(
                f"the sequence failed on the {run.ledger.name} (observations so far: {dump})"
            ) from exc
        write_dump(dump, dev_run, real_run, seconds)
        yield Runs(dev_run, real_run, dump, seconds, real_sagafacts_net.version)
    finally:
        dev.shutdown()
        try:
            devnet.stop()
        except Exception:
            devnet.kill()


def test_devnet_answers_as_real_fabric(runs: Runs) -> None:
    problems = compare(runs.devnet.observations(), runs.fabric.observations())
    header = f"the devnet and real Fabric {runs.fabric_version} disagree"
    assert not problems, f"{header} (observations: {runs.dump}):\n\n" + "\n\n".join(problems)


# Real texts the fault table reads otherwise than the case means, each reported for a
# decision on saga/core/ledger_faults.py (not a new fragment for an intended kind, so the
# table is left as it is): case -> (the kind the table gives, why it is accepted for now).
CLASSIFIER_DISAGREEMENTS: dict[str, tuple[FaultKind, str]] = {
    "tampered_proposal.endorse": (
        FaultKind.MISCONFIGURED,
        "Fabric gives a bad proposal signature the same generic text as an identity the "
        "channel does not accept ('access denied: channel [C] creator org [MSP]', on purpose, "
        "msgvalidation.go), which the table's 'access denied' rule sends to an operator",
    ),
    "tampered_commit_status": (
        FaultKind.MISCONFIGURED,
        "a PERMISSION_DENIED from the Readers policy reads as an identity the channel does "
        "not accept; CommitStatus is signed with the client's own key, so a bad signature "
        "there is the same case as the Endorse one above",
    ),
    "no_chaincode.evaluate": (
        FaultKind.UNAVAILABLE,
        "the gateway's 'no peers available to evaluate chaincode X in channel C' is also its "
        "answer to an outage (org2_down.evaluate_on_org2_after_expiry: the only org asked "
        "is down), so the text cannot tell an undefined chaincode from a down peer; the "
        "table waits (guarantee 7); the Endorse text for an unknown chaincode is MISCONFIGURED",
    ),
}


def test_classifier_reads_every_real_fabric_error_as_meant(runs: Runs) -> None:
    wrong = []
    for rec in runs.fabric.records:
        if rec.kind is None or rec.operation is None:
            continue
        if rec.code is None:
            wrong.append(f"{rec.observation['case']}: expected an error ({rec.kind}), got OK")
            continue
        got = classify(rec.operation, rec.code, rec.message, rec.details).kind
        accepted = CLASSIFIER_DISAGREEMENTS.get(rec.observation["case"])
        if accepted is not None and got == accepted[0]:
            continue
        if got != rec.kind:
            wrong.append(
                f"{rec.observation['case']}: {got} instead of {rec.kind}: {rec.operation} "
                f"{rec.code} {rec.message!r} {rec.details!r}"
            )
    assert not wrong, f"misclassified real Fabric texts (observations: {runs.dump}):\n" + "\n".join(
        wrong
    )
