"""The chain crash-point matrix on a REAL Fabric 2.5 network, and where each cell runs.

The real network (conftest.py: one for the whole package, official 2.5.16 binaries,
three etcdraft orderers, peer0.org1 = the gateway every saga process dials,
peer0.org2 = the other org's endorser, sagafacts as chaincode-as-a-service, the
MAJORITY policy needing both orgs, 0.5 s blocks) takes the place of the devnet for
every cell a real network can reproduce. A missing Fabric binary fails, never skips.

Run only the real-Fabric cells with `pytest tests/fault/chain -k fabric` (~3.5 min).

| cell                                                    | devnet | fabric |
| ------------------------------------------------------- | ------ | ------ |
| test_matrix: baseline_no_fault                          |   x    |   x    |
| test_matrix: worker_killed[5 chain failpoints]          |   x    |   x    |
| test_matrix: compensation_worker_killed[5 failpoints]   |   x    |   x    |
| test_matrix_ledger: two_hosts_same_step[2 failpoints] * |   x    |   x    |
| test_matrix_ledger: watcher_killed_with_100_commits_... |   x    |        |
| here: watcher_killed_with_commits_unrecorded            |        |   x    |
| here: peer_killed_and_restarted[peer0.org1, peer0.org2] |        |   x    |
| here: chaincode_killed_and_restarted                    |        |   x    |
| here: raft_leader_killed_and_restarted                  |        |   x    |
| here: whole_ledger_one_valid_transaction_per_key        |        |   x    |
| test_matrix_ledger: ledger_submit_reply_lost_after_...  |   x    |        |
| test_matrix_ledger: ledger_commit_status_times_out      |   x    |        |
| test_matrix_ledger: ledger_commit_delayed_beyond_the... |   x    |        |
| test_matrix_ledger: ledger_endorsement_refused          |   x    |        |
| test_matrix_ledger: ledger_mvcc_conflict_on_the_key     |   x    |        |
| test_matrix_ledger: ledger_devnet_killed_and_restart... |   x    |        |
| test_matrix_services: rabbitmq / postgres restarted     |   x    |        |
| test_contrast: naive step vs the protocol               |   x    |        |

* Two hosts racing one step's key: both converge on one txid and the stale copy
  commits DUPLICATE_TXID (the cell prints the copies). The protocol never has two
  txids of one step in flight, so the race never becomes an MVCC_READ_CONFLICT on a
  real network; the devnet forces one (ledger_mvcc_conflict_on_the_key).

Devnet only, because a real network cannot produce the fault on demand: a Submit
reply lost after the envelope was ordered, CommitStatus calls that never answer,
blocks held back (commits delayed past the step's timeout, 100 commits held while
the watcher dies, a batch in flight when the whole ledger dies), a forced
MVCC_READ_CONFLICT, and every peer refusing to endorse as a business refusal (on
real Fabric an org's peer that does not answer is an OUTAGE, which
peer_killed_and_restarted[peer0.org2] covers: the saga must wait, not compensate).
The RabbitMQ/PostgreSQL restarts spread sagas over every chain state with the
devnet's held blocks; the test_contrast cell needs a lost reply.

What every cell checks (stack.py, `ChainStack.verify`): each saga terminal with its
expected status and business rows, no local write doubled, per saga exactly the
expected VALID sagafacts transactions on the ledger (1 do for a completed saga, 1 do
+ 1 undo for one compensated after its ledger step), the database's VALID txid being
the ledger's, `saga.app.audit` and on Fabric also the `saga audit` command clean. The
outage cells add: every saga without a simulated business failure COMPLETED, and no
outage spent a step attempt (the ledger step ran as attempt 1 with no failure, its
compensation with none), a payment declined during the outage compensated with
nothing on the ledger, and the outage was felt (a step waited for the ledger; for the
Raft leader, a new one was elected while sagas were at their ledger step).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from saga.adapters.fabric.ledger_scan import ledger_counts
from saga.adapters.sql.tables import saga_history, saga_steps
from saga.ports.ledger import VALID
from saga_fabricnet import FabricNetwork
from tests.fault.chain.conftest import MakeStack
from tests.fault.chain.sagas import LEDGER_STEP
from tests.fault.chain.stack import ChainLedger, ChainStack
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300), pytest.mark.ledgers("fabric")]

# How long a member stays down: long enough for sagas to reach their ledger step
# and wait (a look every 1-2 s under the outage policy), short for the matrix.
OUTAGE_SECONDS = 4.0
WAITING = "waiting for the ledger"


def _standard(stack: ChainStack) -> None:
    stack.relay()
    stack.watcher()
    for _ in range(2):
        stack.worker()


def _do_attempts(stack: ChainStack, ids: list[str]) -> list[Any]:
    return [r for r in stack.attempts(ids) if r.purpose == "do"]


def _history(stack: ChainStack, ids: list[str], kind: str) -> list[Any]:
    with stack.engine.connect() as c:
        return list(
            c.execute(
                select(saga_history).where(
                    saga_history.c.saga_id.in_(ids), saga_history.c.kind == kind
                )
            )
        )


def _outage_spent_nothing(stack: ChainStack, ids: list[str]) -> list[str]:
    """Problems if an outage spent an attempt of the ledger step or failed it."""
    problems: list[str] = []
    with stack.engine.connect() as c:
        rows = c.execute(
            select(saga_steps).where(
                saga_steps.c.saga_id.in_(ids), saga_steps.c.name == LEDGER_STEP
            )
        ).all()
    for r in rows:
        if (r.attempts, r.failures, r.compensation_failures) != (1, 0, 0) or (
            r.compensation_attempts > 1
        ):
            problems.append(
                f"{r.saga_id}: {LEDGER_STEP} attempts={r.attempts} failures={r.failures} "
                f"compensation attempts={r.compensation_attempts} "
                f"failures={r.compensation_failures} (last error {r.last_error!r})"
            )
    failed = [
        h
        for kind in ("step failed", "compensation failed")
        for h in _history(stack, ids, kind)
        if (h.detail or {}).get("step") == LEDGER_STEP
    ]
    problems += [f"{h.saga_id}: {h.kind} {h.detail}" for h in failed]
    return problems


def _outage(
    make_stack: MakeStack,
    pick: Callable[[FabricNetwork], str],
    *,
    seen: Callable[[ChainStack, list[str], str], bool] | None = None,
) -> None:
    """Sagas in flight when `pick`'s member is SIGKILLed, more started while it is
    down, the member started again, one more saga after: every saga must end as if
    nothing happened. `seen` says the outage was felt (default: a step waited)."""
    stack = make_stack()
    fabric = stack.fabric
    member = pick(fabric)
    _standard(stack)
    # First wave: a transaction submitted (in a block being cut, or just committed)
    # when the member dies; its reject_order saga reverses during or after the outage.
    expected = stack.enqueue(["none", "reject_order"])
    first = list(expected)
    wait_for(
        lambda: any(r.state != "prepared" for r in _do_attempts(stack, first)),
        timeout=60,
        what="a chain transaction of the first wave submitted",
        report=lambda: stack.report(first),
        interval=0.02,
    )
    fabric.kill(member)
    down_at = time.monotonic()
    # Second wave: reaches its ledger step while the member is down, but for a
    # declined payment, compensated before the ledger step (nothing on the ledger).
    expected.update(stack.enqueue(["none", "none", "decline_payment"]))
    ids = list(expected)
    felt = seen or (lambda st, ids, _: bool(_history(st, ids, WAITING)))
    wait_for(
        lambda: felt(stack, ids, member),
        timeout=60,
        what=f"the sagas to feel {member} down",
        report=lambda: stack.report(ids),
        interval=0.1,
    )
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
    fabric.start(member)
    down = time.monotonic() - down_at
    # Third wave: the network with the member back takes new sagas.
    expected.update(stack.enqueue(["none"]))
    ids = list(expected)
    result = stack.verify(expected, timeout=120, member=member, down_s=round(down, 1))
    waited = {h.saga_id for h in _history(stack, ids, WAITING)}
    reached = _history(stack, ids, "ledger reached again")
    # The same envelope sent again (a Submit lost, or a commit not seen in time).
    resubmits = sum(
        1
        for w in stack.workers
        for r in w.log_records()
        if r.get("msg") == "chain step verified" and r.get("decision") == "Resubmit"
    )
    problems = _outage_spent_nothing(stack, [s for s in ids if expected[s].do_valid])
    assert not problems, "\n".join(problems) + "\n" + stack.report(ids)
    assert all(p.alive() for p in stack.services), stack.procs.report()
    assert result.worker_restarts == 0, "a worker died in the outage"
    print(
        f"{member} down {down:.1f}s: {len(waited)} of {len(ids)} sagas waited for the ledger, "
        f"{len(reached)} noted it back; {resubmits} resubmissions of a stored envelope"
    )


@pytest.mark.parametrize("member", ["peer0.org1", "peer0.org2"])
def test_peer_killed_and_restarted(make_stack: MakeStack, member: str) -> None:
    """peer0.org1 is the gateway of every saga process (nothing reaches the ledger);
    peer0.org2 is the other org's endorser (endorsement refused: no combination of
    peers satisfies the policy). Either is an outage, not a refusal."""
    _outage(make_stack, lambda _: member)


def test_chaincode_killed_and_restarted(make_stack: MakeStack) -> None:
    """The chaincode server is gone: peers answer 'could not launch chaincode'."""
    _outage(make_stack, lambda _: "chaincode")


def test_raft_leader_killed_and_restarted(make_stack: MakeStack) -> None:
    """The Raft leader of three orderers is SIGKILLed: no leader until the other two
    elect one (~8 s here), then the old leader rejoins as a follower.

    Seen here: a Submit to a follower that still forwards to the dead leader is
    accepted and lost (the watcher's deadline re-drive resubmits the same envelope);
    one that waits for an election is refused SERVICE_UNAVAILABLE after 7 s and the
    gateway tries the next orderer; a Submit dialling the dead one fails UNAVAILABLE
    (the step waits). Which of these a saga meets depends on the gateway's choice of
    orderer, so the cell waits for the election instead of for a LedgerWait."""

    def new_leader(stack: ChainStack, ids: list[str], old: str) -> bool:
        # Sagas of the second wave reach the ledger step within ~1 s of the kill;
        # the election takes several: they meet the leaderless service.
        return stack.fabric.raft_leader(timeout=60) != old

    _outage(make_stack, lambda fabric: fabric.raft_leader(), seen=new_leader)


def test_watcher_killed_with_commits_unrecorded(make_stack: MakeStack) -> None:
    """No re-check messages (SAGA_CHAIN_RECHECK_DELAY=0) and no deadline re-drives:
    only the commit watcher moves a saga past its chain step. It is SIGKILLed as the
    first transaction goes to the orderers; the transactions commit on the ledger while
    no watcher runs, so the database still holds them SUBMITTED; a new watcher starts.

    A real network cannot hold blocks back (the devnet cell holds 100 commits); here
    the commits are pending from the database's point of view, which is what a new
    watcher must recover from."""
    stack = make_stack(chain_recheck_delay=0.0)
    stack.relay()
    watcher = stack.watcher("--wait-timeout", "120")
    for _ in range(2):
        stack.worker()
    expected = stack.enqueue(["none"] * 4)
    ids = list(expected)
    wait_for(
        lambda: any(r.state != "prepared" for r in _do_attempts(stack, ids)),
        timeout=60,
        what="a chain transaction submitted",
        report=lambda: stack.report(ids),
        interval=0.02,
    )
    watcher.kill()
    stack.services.remove(watcher)

    def all_on_the_ledger() -> bool:
        rows = _do_attempts(stack, ids)
        return len({r.saga_id for r in rows}) == len(ids) and all(
            r.state != "prepared" for r in rows
        )

    wait_for(
        all_on_the_ledger,
        timeout=60,
        what="every saga's chain transaction submitted",
        report=lambda: stack.report(ids),
        interval=0.1,
    )
    unrecorded = [r for r in _do_attempts(stack, ids) if r.state == "submitted"]
    client = stack.net.gateway()
    try:
        # Committed on the ledger, not in the database: the commits the dead watcher owed.
        codes = [client.commit_status(r.channel, r.txid, timeout=30).code for r in unrecorded]
    finally:
        client.close()
    assert unrecorded and codes == [VALID] * len(unrecorded), (codes, stack.report(ids))
    stack.watcher("--wait-timeout", "120")
    stack.verify(expected, timeout=120, unrecorded_at_restart=len(unrecorded))


def test_whole_ledger_one_valid_transaction_per_key(net: ChainLedger) -> None:
    """After the cells (this module runs after test_matrix and test_matrix_ledger):
    over every block of the real network, no idempotency key has two VALID
    transactions, stray late copies included. The database of earlier cells is
    emptied between tests, so this is the ledger's half of the audit."""
    client = net.gateway()
    try:
        counts = ledger_counts(client, net.channel)
    finally:
        client.close()
    print(f"\nreal ledger after the matrix: {counts}")
    assert counts.valid > 0 and counts.duplicate_transactions == 0, counts
