"""The chain step crash-point matrix (issue 5): real PostgreSQL, RabbitMQ, devnet and
sagafacts chaincode; real `saga relay`, `saga watcher` and `saga worker` processes.

Every cell ends with each saga terminal, exactly one VALID ledger transaction per
chain step that took effect (and one reversal for a compensated one; none for a
step that never committed), and the audit clean (stack.py, `ChainStack.verify`).
Each prints one `CELL ...` line with its counts and time (run with -s to see them).

Every cell runs twice per ledger: with the chain steps on a `saga worker`, and on a
`saga chain-executor` (the relay routing them to its queue; conftest.py, `runners`),
whose kill takes down the other chain steps it has in progress too (in the default
suite on the devnet, the compensation cells with SAGA_CHAIN_MATRIX_FULL=1: conftest.py).
"""

from __future__ import annotations

import pytest

from tests.fault.chain.conftest import MakeStack
from tests.fault.chain.stack import REVERSED

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

FAILPOINTS = (
    "chain.before_prepared_commit",
    "chain.after_prepared",
    "chain.after_submit",
    "chain.before_done",
    "worker.before_ack",
)


def _aim(point: str, phase: str) -> str:
    """The failpoint term that SIGKILLs the first worker reaching `point` for the ledger step."""
    tags = f"@record_on_ledger@{phase}"
    if point == "worker.before_ack":
        # After the step's done-transaction, not after a "submitted" round.
        tags += "@applied"
    return f"{point}{tags}=once*kill"


@pytest.mark.ledgers("devnet", "fabric")
@pytest.mark.runners("worker", "chain-executor")
def test_baseline_no_fault(make_stack: MakeStack) -> None:
    stack = make_stack()
    stack.relay()
    stack.watcher()
    stack.worker()
    stack.worker()
    expected = stack.enqueue(["none", "none", "reject_order"])
    stack.verify(expected)


# The commit watcher records a VALID commit's step success itself (saga.app.watcher),
# so the executor's own done-transaction runs only when one of its verify passes finds
# the commit first. These cells run without a watcher: the re-check message (2 s in
# the matrix) drives that verify pass, so the kill lands where the points say.
VERIFY_PASS_POINTS = {"chain.before_done", "worker.before_ack"}

WATCHER_FAILPOINTS = ("watcher.before_settle_commit", "watcher.after_settle_commit")


@pytest.mark.ledgers("devnet", "fabric")
@pytest.mark.runners("worker", "chain-executor")
@pytest.mark.parametrize("point", FAILPOINTS)
def test_worker_killed(make_stack: MakeStack, point: str) -> None:
    """SIGKILL at the point on the forward ledger transaction; a supervisor restarts it."""
    stack = make_stack()
    stack.relay()
    if point not in VERIFY_PASS_POINTS:
        stack.watcher()
    for _ in range(2):
        stack.worker(failpoints=_aim(point, "do"))
    expected = stack.enqueue(["none", "reject_order"])
    result = stack.verify(expected)
    assert result.failpoint_hits == [point], result
    assert result.worker_restarts >= 1


@pytest.mark.ledgers("devnet", "fabric")
@pytest.mark.runners("worker", "chain-executor", full_only=True)
@pytest.mark.parametrize("point", FAILPOINTS)
def test_compensation_worker_killed(make_stack: MakeStack, point: str) -> None:
    """reject_order fails the pivot after a VALID ledger step; SIGKILL at the point while
    its reversal runs: exactly one reversing transaction."""
    stack = make_stack()
    stack.relay()
    if point not in VERIFY_PASS_POINTS:
        stack.watcher()
    for _ in range(2):
        stack.worker(failpoints=_aim(point, "undo"))
    expected = stack.enqueue(["reject_order"], expect=REVERSED)
    result = stack.verify(expected)
    assert result.failpoint_hits == [point], result
    assert result.worker_restarts >= 1


@pytest.mark.ledgers("devnet", "fabric")
@pytest.mark.runners("worker")
@pytest.mark.parametrize("phase", ["do", "undo"])
@pytest.mark.parametrize("point", WATCHER_FAILPOINTS)
def test_watcher_killed_settling_a_step(make_stack: MakeStack, point: str, phase: str) -> None:
    """SIGKILL the commit watcher as it records a VALID commit as the step's success
    (forward transaction or reversal), before or after that transaction commits; a
    supervisor restarts it. Before: nothing of it was written, the new watcher follows
    the txid again and records it. After: the saga moved on and nothing repeats."""
    stack = make_stack()
    stack.relay()
    stack.watcher(failpoints=f"{point}@record_on_ledger@{phase}=once*kill")
    stack.worker()
    if phase == "do":
        expected = stack.enqueue(["none", "reject_order"])
    else:
        expected = stack.enqueue(["reject_order"], expect=REVERSED)
    result = stack.verify(expected)
    assert result.failpoint_hits == [point], result
    assert result.worker_restarts >= 1
