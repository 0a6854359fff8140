"""Compensation end to end on real processes, with a worker SIGKILLed midway.

- order-payment's switches: decline_payment (reserve undone), reject_order at the
  pivot (payment voided, then funds released: reverse order), flaky_notify
  (after the pivot: retried forward until it goes through, never compensated);
- fault-undo (tests/fault/fault_sagas.py): three compensable steps, the pivot
  refusing, and the compensation of the middle step ok / flaky / failing for
  good (non-retryable) / spending its attempts; a step after the pivot flaky or
  failing for good.

Checked in the database: status, reason, each business row exactly once and in
order (a failed compensation's own row rolled back with it), attempts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from saga.adapters.sql.tables import sagas
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from saga.examples.order_payment import NAME
from tests.fault.checks import (
    TERMINAL,
    check_sagas,
    doubled_rows,
    expected_for,
    payment,
    terminal_count,
    wait_terminal,
)
from tests.fault.fault_sagas import FAULT_UNDO
from tests.support.processes import Processes
from tests.support.waiting import wait_for

ABC = ["a", "b", "c"]
UNDONE = [*ABC, "undo_c", "undo_b", "undo_a"]

# (input switches, status, effects, reason fragments, {step: (attempts, undo attempts, status)})
UNDO_CASES: list[tuple[dict[str, str], str, list[str], list[str], dict[str, Any]]] = [
    ({"decide": "refuse"}, "compensated", UNDONE, [], {"book_b": (1, 1, "compensated")}),
    (
        {"decide": "refuse", "undo_b": "flaky"},
        "compensated",
        UNDONE,
        [],
        {"book_b": (1, 3, "compensated"), "book_a": (1, 1, "compensated")},
    ),
    (
        {"decide": "refuse", "undo_b": "fails"},
        "failed",
        [*ABC, "undo_c"],
        [
            "compensation of step 'book_b' failed for good",
            "VaultSealed",
            "compensating because step 'decide' failed for good",
            "Refused",
        ],
        {
            "book_b": (1, 1, "compensation_failed"),
            "book_a": (1, 0, "done"),
            "book_c": (1, 1, "compensated"),
        },
    ),
    (
        {"decide": "refuse", "undo_b": "exhausted"},
        "failed",
        [*ABC, "undo_c"],
        ["compensation of step 'book_b' failed for good", "StillBusy"],
        {"book_b": (1, 3, "compensation_failed"), "book_a": (1, 0, "done")},
    ),
    (
        {"decide": "accept", "announce": "flaky"},
        "completed",
        [*ABC, "decide", "announce"],
        [],
        {"announce": (3, 0, "done")},
    ),
    (
        {"decide": "accept", "announce": "fails"},
        "failed",
        [*ABC, "decide"],
        ["step 'announce' after the pivot failed for good", "StillBusy"],
        {"announce": (3, 0, "failed"), "book_c": (1, 0, "done"), "decide": (1, 0, "done")},
    ),
]


def open_ids(engine: Engine, ids: list[str]) -> set[str]:
    """The sagas among `ids` not yet in a terminal state."""
    with engine.connect() as c:
        return set(
            c.execute(
                select(sagas.c.id).where(sagas.c.id.in_(ids), sagas.c.status.not_in(TERMINAL))
            ).scalars()
        )


@pytest.mark.fault
def test_compensation_reverse_order_failure_and_forward_retry_with_a_worker_killed(
    settings: Settings,
    engine: Engine,
    orch: Orchestrator,
    procs: Processes,
) -> None:
    expected: dict[str, tuple[str, list[str]]] = {}
    reasons: dict[str, list[str]] = {}
    step_checks: dict[str, dict[str, Any]] = {}
    for i, simulate in enumerate(["decline_payment", "reject_order", "flaky_notify", "none"] * 4):
        saga_id = orch.enqueue(NAME, payment("undo", i, simulate)).saga_id
        expected[saga_id] = expected_for(simulate)
        if simulate == "decline_payment":
            reasons[saga_id] = ["step 'record_payment' failed for good", "PaymentDeclined"]
        if simulate == "reject_order":
            reasons[saga_id] = ["step 'confirm_order' failed for good", "OrderRejected"]
        if simulate == "flaky_notify":
            step_checks[saga_id] = {"notify_customer": (3, 0, "done")}
    for round_ in range(3):
        for j, (switches, status, effects, why, steps) in enumerate(UNDO_CASES):
            saga_id = orch.enqueue(
                FAULT_UNDO, {"order_id": f"undo-{round_}-{j}", **switches}
            ).saga_id
            expected[saga_id] = (status, effects)
            reasons[saga_id] = why
            step_checks[saga_id] = steps

    ids = list(expected)
    procs.relay(settings)
    first = procs.worker(settings, concurrency=2)
    # Kill the worker mid-flow: some sagas finished, others mid-compensation.
    wait_for(
        lambda: terminal_count(engine, ids) >= len(ids) // 4,
        timeout=90,
        what="a quarter of the sagas to finish",
        report=procs.report,
        alive=procs.running(),
    )
    first.kill()
    open_at_kill = open_ids(engine, ids)
    second = procs.worker(settings, concurrency=2)

    wait_terminal(engine, list(expected), timeout=150, logs=procs.report, alive=procs.running())
    got = check_sagas(engine, expected, reason_contains=reasons)
    assert doubled_rows(engine) == []

    problems = []
    for saga_id, steps in step_checks.items():
        view = {s.name: s for s in got[saga_id].steps}
        for name, (attempts, undo_attempts, status) in steps.items():
            s = view[name]
            if (s.attempts, s.compensation_attempts, s.status) != (attempts, undo_attempts, status):
                problems.append(
                    f"{saga_id} {name}: expected attempts={attempts} undo={undo_attempts} "
                    f"{status}, got {s.attempts}/{s.compensation_attempts} {s.status}"
                )
    assert not problems, "\n".join(problems)
    # Every failed saga names why, for the operator.
    assert all(v.reason for v in got.values() if v.status == "failed")

    # The kill struck mid-flow: the first worker died of it with sagas still open,
    # and the second one finished those, compensations included.
    assert first.returncode == -9, first.tail()
    assert 0 < len(open_at_kill) <= len(ids) - len(ids) // 4, open_at_kill
    taken_over = Counter(
        str(r.get("phase"))
        for r in second.log_records()
        if r.get("msg") == "step message handled"
        and r.get("outcome") == "applied"
        and r.get("saga_id") in open_at_kill
    )
    assert taken_over["do"] > 0 and taken_over["undo"] > 0, (taken_over, second.tail())
