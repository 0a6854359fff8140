"""Crash-point matrix, continued: the commit watcher killed, ledger faults, two hosts.

Same stack and checks as test_matrix.py (stack.py). The devnet's fault knobs are
set over its admin API; the `net` fixture resets them (and restarts a devnet a
cell killed) before and after each cell.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from saga.adapters.rabbitmq import AmqpPublisher, Topology
from saga.adapters.sql.tables import outbox, saga_history
from saga.failpoints import hits
from saga.ports.broker import PendingMessage
from saga.ports.ledger import DUPLICATE_TXID, VALID
from tests.fault.chain.conftest import MakeStack
from tests.fault.chain.sagas import LEDGER_STEP, SHORT, SHORT_TIMEOUT
from tests.fault.chain.stack import COMPLETED, NEVER_ON_LEDGER, ChainStack
from tests.support.processes import SagaProcess
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]


def _standard(stack: ChainStack, workers: int = 2) -> None:
    stack.relay()
    stack.watcher()
    for _ in range(workers):
        stack.worker()


def _do_attempts(stack: ChainStack, ids: list[str]) -> list[Any]:
    return [r for r in stack.attempts(ids) if r.purpose == "do"]


def _log_count(processes: list[SagaProcess], msg: str) -> int:
    return sum(1 for p in processes for r in p.log_records() if r.get("msg") == msg)


# -- the commit watcher ---------------------------------------------------------------


def _watcher_tracked(watcher: SagaProcess) -> int:
    tracked = [
        r.get("tracked", 0) for r in watcher.log_records() if r.get("msg") == "watcher status"
    ]
    return int(tracked[-1]) if tracked else 0


def _valid_on_ledger(stack: ChainStack, txids: set[str]) -> int:
    scan = stack.scan()
    return sum(1 for txid in txids if (tx := scan.get(txid)) is not None and tx.valid)


def test_watcher_killed_with_100_commits_pending(make_stack: MakeStack) -> None:
    """No re-check messages (SAGA_CHAIN_RECHECK_DELAY=0): the watcher alone re-drives
    the chain steps. Commits are held back until 100 are pending and followed; the
    watcher is SIGKILLed, the blocks released while no watcher runs, and a new one
    started."""
    stack = make_stack(chain_recheck_delay=0.0)
    stack.devnet.set_faults(stall_commits=True)
    stack.relay()
    # No deadline re-drives either while the commits are held back: nothing but
    # the watcher's commit messages moves a saga past its chain step.
    watcher = stack.watcher("--wait-timeout", "120")
    for _ in range(2):
        stack.worker()
    expected = stack.enqueue(["none"] * 100)
    ids = list(expected)

    def pending_and_followed() -> bool:
        submitted = [r for r in _do_attempts(stack, ids) if r.state == "submitted"]
        return len(submitted) == 100 and _watcher_tracked(watcher) >= 100

    wait_for(
        pending_and_followed,
        timeout=120,
        what="100 chain transactions submitted and followed by the watcher",
        report=lambda: stack.report(ids),
        interval=0.5,
    )
    watcher.kill()
    stack.services.remove(watcher)
    stack.devnet.set_faults(stall_commits=False)
    # The blocks commit while no watcher runs: wait until the ledger shows every one.
    txids = {r.txid for r in _do_attempts(stack, ids)}
    wait_for(
        lambda: _valid_on_ledger(stack, txids) == len(txids),
        timeout=60,
        what=f"the {len(txids)} held transactions to commit VALID while no watcher runs",
        report=lambda: stack.report(ids),
        interval=0.5,
    )
    waiting = sum(1 for r in _do_attempts(stack, ids) if r.state != "committed")
    stack.watcher("--wait-timeout", "120")
    stack.verify(expected, timeout=120, pending_when_killed=100, unrecorded_at_restart=waiting)
    assert len(txids) == 100
    assert waiting == 100  # nothing recorded the commits while the watcher was dead


# -- ledger faults ---------------------------------------------------------------------


def test_ledger_submit_reply_lost_after_ordering(make_stack: MakeStack) -> None:
    stack = make_stack()
    stack.devnet.set_faults(drop_submit_reply=1)
    _standard(stack)
    expected = stack.enqueue(["none"])
    result = stack.verify(expected)
    rows = _do_attempts(stack, list(expected))
    # The reply was lost, the envelope ordered: the same txid, never a second one.
    assert len(rows) == 1 and rows[0].code == VALID, rows
    assert _log_count(stack.workers, "submit outcome unknown") >= 1, stack.procs.report()
    assert result.do_valid == 1


def test_ledger_commit_status_times_out(make_stack: MakeStack) -> None:
    stack = make_stack()
    # The next CommitStatus calls (watcher's and workers') never answer.
    stack.devnet.set_faults(commit_status_hang=4)
    _standard(stack)
    expected = stack.enqueue(["none"])
    stack.verify(expected)
    rows = _do_attempts(stack, list(expected))
    assert len(rows) == 1 and rows[0].code == VALID, rows


def test_ledger_commit_delayed_beyond_the_step_timeout(make_stack: MakeStack) -> None:
    """Blocks held 3 x the step's timeout: the step fails in doubt (never compensated,
    never a new transaction), is retried, and completes when the commit lands."""
    stack = make_stack()
    stack.devnet.set_faults(commit_delay=3 * SHORT_TIMEOUT)
    _standard(stack)
    expected = stack.enqueue(["none"], saga=SHORT, expect=COMPLETED)
    stack.verify(expected, timeout=120)
    ids = list(expected)
    rows = _do_attempts(stack, ids)
    assert len(rows) == 1 and rows[0].code == VALID, rows
    with stack.engine.connect() as c:
        failures = [
            ((r.detail or {}).get("error"), r.at)
            for r in c.execute(
                select(saga_history).where(
                    saga_history.c.saga_id == ids[0], saga_history.c.kind == "step failed"
                )
            )
        ]
    failed = [error for error, _ in failures]
    # The timeout did fire: the step failed in doubt (and was retried, not compensated).
    assert "LedgerOutcomeUnknown" in failed, failed
    # ... before the delayed commit landed: the block came more than the step's
    # timeout after the submit, and the in-doubt failure was recorded before it.
    [row] = rows
    assert row.submitted_at is not None and row.committed_at is not None, row
    assert (row.committed_at - row.submitted_at).total_seconds() > SHORT_TIMEOUT, row
    in_doubt = min(at for error, at in failures if error == "LedgerOutcomeUnknown")
    assert in_doubt < row.committed_at, (failures, row)


def test_ledger_endorsement_refused(make_stack: MakeStack) -> None:
    """Every peer refuses to endorse: nothing is ever submitted, the step fails for
    good after its retries and the saga compensates with no ledger effect at all."""
    stack = make_stack()
    stack.devnet.set_faults(refuse_endorsement="*")
    _standard(stack)
    expected = stack.enqueue(["none"], expect=NEVER_ON_LEDGER)
    stack.wait_terminal(list(expected), timeout=120)
    # The knob refuses queries too: lift it so the ledger can be scanned.
    stack.devnet.reset_faults()
    stack.verify(expected)
    assert _do_attempts(stack, list(expected)) == []


def test_ledger_mvcc_conflict_on_the_key(make_stack: MakeStack) -> None:
    stack = make_stack()
    stack.devnet.set_faults(force_mvcc_conflict=1)
    _standard(stack)
    expected = stack.enqueue(["none"])
    result = stack.verify(expected)
    rows = _do_attempts(stack, list(expected))
    # The first txid is final and invalid; only then was a second one prepared.
    assert [r.code == VALID for r in rows] == [False, True], rows
    assert result.invalid_attempts == 1


def test_ledger_devnet_killed_and_restarted_mid_batch(make_stack: MakeStack) -> None:
    """Blocks are cut and held (commit_delay) while transactions are submitted; the
    devnet is SIGKILLed with a batch in flight and started again on its data."""
    stack = make_stack()
    devnet = stack.devnet
    devnet.set_faults(commit_delay=3.0)
    _standard(stack)
    expected = stack.enqueue(["none"] * 5 + ["reject_order"])
    ids = list(expected)
    wait_for(
        lambda: sum(1 for r in _do_attempts(stack, ids) if r.state == "submitted") >= 3,
        timeout=60,
        what="three chain transactions submitted, not committed",
        report=lambda: stack.report(ids),
        interval=0.1,
    )
    in_flight = sum(1 for r in _do_attempts(stack, ids) if r.state != "committed")
    devnet.kill()
    time.sleep(1.0)
    devnet.start()  # its fault knobs are not kept: no more delay
    stack.verify(expected, timeout=120, in_flight_at_kill=in_flight)


# -- two hosts -------------------------------------------------------------------------


def _publish_copy(stack: ChainStack, saga_id: str) -> dict[str, Any]:
    """Publish the step message of the ledger step again, same message id: what a
    broker redelivery or a load balancer's retry hands to another server."""
    with stack.engine.connect() as c:
        rows = c.execute(
            select(outbox).where(outbox.c.saga_id == saga_id).order_by(outbox.c.id)
        ).all()
    row = next(r for r in rows if r.body.get("step") == LEDGER_STEP and r.body["phase"] == "do")
    publisher = AmqpPublisher(stack.settings.broker_url, Topology.from_settings(stack.settings))
    try:
        publisher.publish_batch([PendingMessage(row.id, row.message_id, row.saga_id, row.body)])
    finally:
        publisher.close()
    body: dict[str, Any] = row.body
    return body


@pytest.mark.ledgers("devnet", "fabric")
@pytest.mark.parametrize("point", ["chain.after_prepared", "chain.after_submit"])
def test_two_hosts_same_step(make_stack: MakeStack, point: str, tmp_path: Path) -> None:
    """Worker A (host-a) stops at the point for SLEEP seconds; a copy of the step
    message goes to worker B (host-b), which runs the step while A still waits."""
    sleep = 10.0
    stack = make_stack()
    stack.relay()
    stack.watcher()
    a = stack.worker(
        hostname="saga@host-a", failpoints=f"{point}@{LEDGER_STEP}@do=once*sleep({sleep:g})"
    )
    expected = stack.enqueue(["none"])
    ids = list(expected)
    fired = wait_for(
        lambda: hits(stack.markers),
        timeout=60,
        what=f"worker A to reach {point}",
        report=lambda: stack.report(ids),
    )
    a_wakes = float(fired[0]["at"]) + sleep
    body = _publish_copy(stack, ids[0])
    b = stack.worker(hostname="saga@host-b")
    stack.wait_terminal(ids, timeout=60)
    finished_before_a_woke = time.time() < a_wakes

    def a_rounds() -> list[Any]:
        return [
            r.get("outcome")
            for r in a.log_records()
            if r.get("msg") == "step message handled" and r.get("step") == LEDGER_STEP
        ]

    # A wakes up and finishes its stale round before the ledger is counted.
    wait_for(
        a_rounds,
        timeout=sleep + 60,
        what="worker A to finish its round after waking",
        report=lambda: stack.report(ids),
    )
    result = stack.verify(
        expected, finished_before_a_woke=finished_before_a_woke, message_id=body["message_id"]
    )
    rows = _do_attempts(stack, ids)
    assert len(rows) == 1 and rows[0].code == VALID, rows
    assert result.do_valid == 1
    assert finished_before_a_woke, "B should have finished the saga while A slept"
    handled_b = [r for r in b.log_records() if r.get("msg") == "step message handled"]
    assert any(r.get("step") == LEDGER_STEP for r in handled_b), b.tail()
    assert a.alive()
    # A's round ends at its Submit (what follows a Submit needs no look at the saga,
    # so it takes none): "submitted", whatever B did meanwhile. What A sent, if
    # anything, is the stored envelope, counted on the blocks below.
    assert a_rounds() == ["submitted"], (a_rounds(), a.tail())
    # The race on the step's key, as the blocks show it: every copy of the one txid.
    # Stopped after PREPARED, A sends the stored envelope when it wakes, and that
    # copy commits DUPLICATE_TXID; stopped after Submit, A sends nothing more.
    expected_copies = [VALID, DUPLICATE_TXID] if point == "chain.after_prepared" else [VALID]

    def copies() -> list[int]:
        return [tx.code for tx in stack.scan().txs if tx.txid == rows[0].txid]

    wait_for(
        lambda: len(copies()) >= len(expected_copies),
        timeout=30,
        what=f"{len(expected_copies)} copies of txid {rows[0].txid[:12]} in the blocks",
        report=lambda: stack.report(ids),
    )
    found = copies()
    assert found == expected_copies, (found, stack.report(ids))
