"""A Fabric member lost in the middle of a run of chain sagas, on a network with more
than one of each (issue 15 item 3): three Raft orderers, and two peers in Org1.

The module's own network (launcher option `org1_peers=2`, official 2.5.16 binaries,
0.5 s blocks): peer0.org1 and peer1.org1, both in connection-org1.json, peer0.org2,
sagafacts as one chaincode server both Org1 peers dial. Every saga process (relay,
watcher, workers) is given the profile and nothing else, so its Gateway client knows
both Org1 peers and starts on peer0.org1.

In the middle of a stream of 50 order-payment sagas (one saga through first, then
the fault in the second half of the stream once a chain transaction is on its way):

- the Raft leader is SIGKILLed and stays down: the two other orderers elect a new
  leader and take the transactions;
- the client's gateway peer, peer0.org1, is SIGKILLed and stays down until every
  saga has finished: nothing reaches the ledger unless every process moves to
  peer1.org1. Re-check messages are off (SAGA_CHAIN_RECHECK_DELAY=0), so only the
  commit watcher and the steps' own waits move a saga past its chain step: the
  watcher must move too.

Then (ChainStack.verify): every saga terminal and COMPLETED (no business failure is
simulated), exactly its business rows (no local write doubled), exactly one VALID
sagafacts transaction per saga on the real blocks, the database's VALID txid the
ledger's, `saga.app.audit` and the `saga audit` command clean. Each test prints the
fault's figures: sagas in flight and chain transactions pending when it struck, the
outcome counts, duplicate VALID transactions (0), copies of a resubmitted envelope the
ledger marked DUPLICATE_TXID, and the recovery time (fault to the first saga completed
after it). No ledger step spent an attempt or failed on the fault.

Two client-level tests on the same network: a Submit that met the dead peer is not
sent to the next peer by the client (only the caller's verify path sends it again),
and a client moves back to peer0.org1 once it has returned and peer1.org1 dies.
Module cost: ~2-2.5 min here (network ~10-14 s, each fault run ~45-55 s).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import func, select

from saga.adapters.fabric import (
    AsyncGatewayClient,
    CommitStatusError,
    SigningIdentity,
    SubmitError,
    load_connection_profile,
)
from saga.adapters.fabric.ledger_scan import scan_ledger
from saga.adapters.fabric.peers import PeerSet
from saga.adapters.sql.tables import sagas
from saga.core.definitions import chain_key
from saga.core.ledger_faults import FaultKind
from saga.ports.ledger import VALID
from saga_fabricnet import FabricNetwork, NetworkOptions
from tests.fault.chain.conftest import MakeStack
from tests.fault.chain.sagas import LEDGER_STEP
from tests.fault.chain.stack import ChainStack, Expect
from tests.fault.chain.test_matrix_outages import _outage_spent_nothing
from tests.fault.checks import terminal_count
from tests.support.fabricnet import (
    TEST_BATCH_TIMEOUT,
    RealLedgerNet,
    fabric_release,
    real_network,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300), pytest.mark.ledgers("fabric")]

SAGAS = 50
# Faster than the stack finishes them: a backlog is in flight when the fault strikes.
ENQUEUE_EVERY = 0.05
WORKERS = 3
MOVED = "gateway peer unreachable; moving to the next peer of the org"
GATEWAY_PEER = "peer0.org1"


@pytest.fixture(scope="module")
def fabric_chain_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealLedgerNet]:
    """This module's network (overrides the chain package's one-peer network)."""
    options = NetworkOptions(batch_timeout=TEST_BATCH_TIMEOUT, org1_peers=2)
    with real_network(tmp_path_factory.mktemp("fabric-ha"), fabric_release(), options) as net:
        assert net.network.org_peers(1) == ["peer0.org1", "peer1.org1"]
        yield net


def _moves(stack: ChainStack, kind: str) -> int:
    """How often the `kind` processes ("worker", "watcher") moved to another peer."""
    procs = [p for p in [*stack.services, *stack.workers] if p.name.startswith(kind)]
    return sum(1 for p in procs for r in p.log_records() if r.get("msg") == MOVED)


def _first_completed_after(
    stack: ChainStack, ids: list[str], at: datetime, *, started_after: bool = False
) -> float | None:
    """Seconds from `at` to the first of `ids` completed after it (of those started
    after it, with `started_after`: a saga that went through its ledger step on the
    network as the fault left it)."""
    query = select(func.min(sagas.c.updated_at)).where(
        sagas.c.id.in_(ids), sagas.c.status == "completed", sagas.c.updated_at > at
    )
    if started_after:
        query = query.where(sagas.c.created_at > at)
    with stack.engine.connect() as c:
        first = c.execute(query).scalar()
    return None if first is None else (first - at).total_seconds()


@dataclass(frozen=True)
class _Fault:
    member: str
    at: datetime
    started: float
    open: int  # sagas started and not terminal
    pending: int  # chain transactions endorsed or submitted, commit not recorded


def _strike(
    stack: ChainStack, ids: list[str], fault: Callable[[FabricNetwork], str], *, wait: bool
) -> _Fault | None:
    """Inject the fault if a chain transaction is pending (or, with `wait`, once one is)."""

    def pending() -> int:
        return sum(1 for r in stack.attempts(ids) if r.state != "committed")

    if wait:
        wait_for(lambda: pending() > 0, timeout=60, what="a chain transaction pending")
    elif not pending():
        return None
    open_now = len(ids) - terminal_count(stack.engine, ids)
    pending_now = pending()
    at, started = datetime.now(UTC), time.monotonic()
    return _Fault(fault(stack.fabric), at, started, open_now, pending_now)


def _run_with_fault(
    make_stack: MakeStack, fault: Callable[[FabricNetwork], str], **overrides: float
) -> tuple[ChainStack, dict[str, object]]:
    stack = make_stack(**overrides)
    stack.relay()
    stack.watcher()
    for _ in range(WORKERS):
        stack.worker()
    # One saga through first: the processes are up and their clients talk to the
    # gateway peer (booting them takes seconds on a loaded machine).
    expected: dict[str, Expect] = stack.enqueue(["none"])
    warm = list(expected)
    wait_for(
        lambda: terminal_count(stack.engine, warm) == 1,
        timeout=120,
        what="the first saga through the stack",
        report=lambda: stack.report(warm),
    )
    # Then a steady stream, the fault in its second half as soon as a chain
    # transaction is on its way (endorsed or submitted, its commit not yet recorded):
    # sagas are at every stage when it strikes.
    struck: _Fault | None = None
    for i in range(1, SAGAS):
        if struck is None and i >= SAGAS // 2:
            struck = _strike(stack, list(expected), fault, wait=i == SAGAS - 1)
        expected.update(stack.enqueue(["none"]))
        time.sleep(ENQUEUE_EVERY)
    assert struck is not None
    at = struck.at
    ids = list(expected)
    result = stack.verify(expected, timeout=180, member=struck.member)
    recovery = _first_completed_after(stack, ids, at)
    new_saga_done = _first_completed_after(stack, ids, at, started_after=True)
    scan = stack.scan()
    keys = {chain_key(s, LEDGER_STEP, "do") for s in ids}
    valid = scan.valid_by_key()
    duplicates = sum(len(valid.get(k, ())) - 1 for k in keys if len(valid.get(k, ())) > 1)
    copies = Counter(tx.code for tx in scan.txs if set(tx.created) & keys and tx.code != VALID)
    resubmits = sum(
        1
        for w in stack.workers
        for r in w.log_records()
        if r.get("msg") == "chain step verified" and r.get("decision") == "Resubmit"
    )
    figures: dict[str, object] = {
        "member": struck.member,
        "sagas": SAGAS,
        "in_flight_at_fault": struck.open,
        "chain_tx_pending_at_fault": struck.pending,
        "outcomes": result.statuses,
        "duplicate_valid": duplicates,
        "invalid_copies_by_code": dict(copies),
        "resubmits": resubmits,
        "recovery_s": None if recovery is None else round(recovery, 2),
        "first_saga_started_after_fault_completed_s": None
        if new_saga_done is None
        else round(new_saga_done, 2),
        "fault_to_all_terminal_s": round(time.monotonic() - struck.started, 1),
        "worker_moves": _moves(stack, "worker"),
        "watcher_moves": _moves(stack, "watcher"),
    }
    print(f"\nHA FAULT {figures}")
    assert result.statuses == {"completed": SAGAS}, result.statuses
    # The fault spent no attempt of any saga's ledger step and failed none.
    spent = _outage_spent_nothing(stack, ids)
    assert not spent, "\n".join(spent)
    assert duplicates == 0, figures
    assert struck.open > 0 and struck.pending > 0, figures
    assert recovery is not None, figures
    assert all(p.alive() for p in stack.services), stack.procs.report()
    assert result.worker_restarts == 0, "a worker died"
    return stack, figures


def test_raft_leader_killed_mid_run(make_stack: MakeStack) -> None:
    """The leader of three etcdraft orderers SIGKILLed, left down: a new leader is
    elected by the other two, and every saga completes once."""
    killed: list[str] = []

    def kill_leader(fabric: FabricNetwork) -> str:
        leader = fabric.raft_leader()
        fabric.kill(leader)
        killed.append(leader)
        return leader

    stack, _ = _run_with_fault(make_stack, kill_leader)
    assert stack.fabric.raft_leader(timeout=30) != killed[0]


def test_gateway_peer_killed_mid_run(make_stack: MakeStack) -> None:
    """peer0.org1, the peer every saga process dials first, SIGKILLed and left down
    until every saga has finished: the workers and the watcher move to peer1.org1."""

    def kill_gateway_peer(fabric: FabricNetwork) -> str:
        fabric.kill(GATEWAY_PEER)
        return GATEWAY_PEER

    stack, figures = _run_with_fault(make_stack, kill_gateway_peer, chain_recheck_delay=0.0)
    assert not stack.fabric.running(GATEWAY_PEER), "the peer came back during the run"
    # Both kinds of client left the dead peer: the chain step's (workers) and the
    # commit watcher's (the only thing that moves a submitted step on here).
    assert figures["worker_moves"], figures
    assert figures["watcher_moves"], figures


def test_client_moves_but_never_sends_a_submit_again(fabric_chain_net: RealLedgerNet) -> None:
    """One client of both Org1 peers, peer0.org1 killed: an endorsement, a read and a
    commit status each succeed in one call on peer1.org1 (the asyncio client's too);
    a Submit that met the dead peer fails (its outcome unknown to the client) and is
    NOT sent to peer1.org1 by the client: the transaction is not on the ledger until
    the caller sends the same envelope again, which goes to peer1.org1 and commits
    VALID, once."""
    network = fabric_chain_net.network
    channel = network.channel
    peer0, peer1 = (f"localhost:{network.state.ports.peer(1, n).listen}" for n in (0, 1))
    key = f"ha-client-{time.time_ns()}"
    before = network.gateway(1)
    done = before.prepare(channel, "sagafacts", "RecordFact", [f"{key}-0", "ha", "{}"])
    before.submit(done)
    assert before.commit_status(channel, done.txid, timeout=30).code == VALID
    network.kill(GATEWAY_PEER)
    try:
        reader = network.gateway(1)
        assert reader.peer_address == peer0
        prepared = reader.prepare(channel, "sagafacts", "RecordFact", [key, "ha", "{}"])
        assert reader.peer_address == peer1
        assert reader.commit_status(channel, done.txid, timeout=30).code == VALID
        assert asyncio.run(_async_status(network, channel, done.txid)) == VALID

        submitter = network.gateway(1)
        with pytest.raises(SubmitError) as failed:
            submitter.submit(prepared)
        assert failed.value.code is grpc.StatusCode.UNAVAILABLE, failed.value
        assert failed.value.fault.kind is FaultKind.UNAVAILABLE
        assert submitter.peer_address == peer1
        # Not ordered: peer1.org1 never got it (CommitStatus waits for a commit).
        with pytest.raises(CommitStatusError) as unknown:
            submitter.commit_status(channel, prepared.txid, timeout=3)
        assert unknown.value.code is grpc.StatusCode.DEADLINE_EXCEEDED, unknown.value
        submitter.submit(prepared)
        assert submitter.commit_status(channel, prepared.txid, timeout=30).code == VALID
        found = scan_ledger(submitter, channel).valid_by_key().get(key, [])
        assert [tx.txid for tx in found] == [prepared.txid]
    finally:
        network.close_clients()
        network.start(GATEWAY_PEER)
        network.wait_ready()


def test_client_moves_back_when_the_other_peer_dies(fabric_chain_net: RealLedgerNet) -> None:
    """peer0.org1 down: the client moves to peer1.org1 and stays there after peer0
    returns; then peer1.org1 down: the same client moves back to peer0.org1, each
    time within one call."""
    network = fabric_chain_net.network
    channel = network.channel
    peer0, peer1 = (f"localhost:{network.state.ports.peer(1, n).listen}" for n in (0, 1))
    client = network.gateway(1)

    def read() -> bytes:
        return client.evaluate(channel, "qscc", "GetChainInfo", [channel], timeout=30)

    try:
        network.kill(GATEWAY_PEER)
        read()
        assert client.peer_address == peer1
        network.start(GATEWAY_PEER)
        network.wait_ready()
        read()
        assert client.peer_address == peer1, "moved back while its peer was fine"
        network.kill("peer1.org1")
        read()
        assert client.peer_address == peer0
    finally:
        network.close_clients()
        for member in (GATEWAY_PEER, "peer1.org1"):
            if not network.running(member):
                network.start(member)
        network.wait_ready()


async def _async_status(network: FabricNetwork, channel: str, txid: str) -> int:
    peers, identity = _org1_peers(network)
    async with AsyncGatewayClient.connect(peers, identity) as client:
        return (await client.commit_status(channel, txid, timeout=30)).code


def _org1_peers(network: FabricNetwork) -> tuple[PeerSet, SigningIdentity]:
    profile = load_connection_profile(network.profile(1))
    peers = PeerSet([e for _, e in profile.gateway_peers()])
    return peers, SigningIdentity.from_msp_dir(profile.msp_id, network.msp_dir(1))
