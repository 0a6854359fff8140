"""A worker SIGKILLed inside a fused run of local steps, and just after its commit
(real PostgreSQL, RabbitMQ, `saga relay` and `saga worker` processes).

One delivery of `reserve_funds` runs record_payment, confirm_order and
notify_customer in the same transaction (fused): one commit for the four steps,
whose messages are never written. Killed inside the run (in record_payment's
action, after its business write), nothing of it may be kept: the saga, the
inbox and the outbox are as the enqueue left them, and the redelivered message
runs the whole run again on a second worker. Killed just after the commit,
everything is kept and the redelivered message is a duplicate. Either way every
effect exists once and every step took one attempt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.sql.tables import inbox, outbox
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from tests.fault.checks import (
    PAID,
    check_sagas,
    doubled_rows,
    expected_for,
    payment,
    views,
    wait_terminal,
)
from tests.fault.fault_sagas import FAULT_PAYMENT
from tests.support.processes import Processes, read_marker
from tests.support.waiting import wait_for


def stored(engine: Engine, saga_id: str) -> tuple[int, int, int]:
    """(outbox rows, unpublished outbox rows, inbox records) of the saga."""
    with engine.connect() as c:
        rows = c.execute(
            select(func.count(), func.count().filter(outbox.c.published_at.is_(None))).where(
                outbox.c.saga_id == saga_id
            )
        ).one()
        seen = c.execute(
            select(func.count()).select_from(inbox).where(inbox.c.saga_id == saga_id)
        ).scalar_one()
    return int(rows[0]), int(rows[1]), int(seen)


@pytest.mark.fault
@pytest.mark.parametrize("hook", ["in_transaction", "after_commit"])
def test_worker_killed_in_a_fused_run(
    hook: str,
    settings: Settings,
    engine: Engine,
    orch: Orchestrator,
    procs: Processes,
    tmp_path: Path,
) -> None:
    assert settings.worker_inline_steps >= 3
    marker = tmp_path / "marker.json"
    status, effects = expected_for("none")
    victim = orch.enqueue(
        FAULT_PAYMENT,
        payment("fused", 0, hook=hook, hook_step="record_payment", marker=str(marker)),
    ).saga_id
    bystanders = {
        orch.enqueue(FAULT_PAYMENT, payment("bystander", i)).saga_id: (status, effects)
        for i in range(6)
    }
    procs.relay(settings)
    first = procs.worker(settings, concurrency=2)
    wait_for(
        lambda: read_marker(marker),
        timeout=60,
        what=f"the {hook} hook of the fused record_payment step",
        report=procs.report,
    )
    view = views(engine, [victim])[victim]
    if hook == "in_transaction":
        # reserve_funds and record_payment wrote their rows, uncommitted: nothing
        # of the run is visible, not even the claim of the delivered message.
        assert (view.status, view.current, view.effects) == ("running", 0, []), view.line()
        assert [s.attempts for s in view.steps] == [1, 0, 0, 0], view.line()
        assert stored(engine, victim) == (1, 0, 0)
    else:
        # One commit for the four steps: the saga is done, and only the delivered
        # message was ever written to the outbox or recorded in the inbox.
        assert (view.status, view.effects) == ("completed", PAID), view.line()
        assert stored(engine, victim) == (1, 0, 1)
    first.kill()

    second = procs.worker(settings, concurrency=2)
    wait_terminal(
        engine, [victim, *bystanders], timeout=120, logs=procs.report, alive=procs.running()
    )
    check_sagas(engine, {victim: (status, effects), **bystanders})
    assert doubled_rows(engine) == []
    view = views(engine, [victim])[victim]
    # Each step ran in one attempt: the kill cost no retry.
    assert [s.attempts for s in view.steps] == [1] * len(view.steps), view.line()
    # Still one message written and one claimed for the whole saga.
    assert stored(engine, victim) == (1, 0, 1)

    def handled() -> list[Any]:
        return [
            r.get("outcome")
            for r in second.log_records()
            if r.get("msg") == "step message handled" and r.get("saga_id") == victim
        ]

    # Killed after its commit, the victim was already terminal: wait for the
    # second worker to meet the redelivered message before reading what it did.
    wait_for(handled, timeout=60, what="the redelivered message handled", report=procs.report)
    # The delivered message came back: run again, or found done.
    assert handled() == (["applied"] if hook == "in_transaction" else ["duplicate"]), procs.report()
