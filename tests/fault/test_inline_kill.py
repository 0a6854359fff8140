"""A worker SIGKILLed while it runs a saga's following steps inline, one step per
transaction (real PostgreSQL, RabbitMQ, `saga relay` and `saga worker` processes).
The steps of `fault-payment-stepwise` are declared external, so they are never
fused (tests/fault/test_fused_kill.py has the fused runs).

With SAGA_WORKER_INLINE_STEPS > 0 the task that ran `reserve_funds` goes on to run
`record_payment` itself, without a delivery: its message sits in the outbox held
back by the reserve (2 s here). The kill comes inside that inline step's
transaction, or just after it committed. Either way nothing may be lost or run
twice: the delivered message (`reserve_funds`) comes back from the broker and is a
duplicate, and the held message goes out through the relay when its reserve
passes, so the saga finishes on a second worker with every effect once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.sql.tables import outbox
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from saga.core.step_message import StepMessage
from tests.fault.checks import (
    check_sagas,
    doubled_rows,
    expected_for,
    payment,
    views,
    wait_terminal,
)
from tests.fault.fault_sagas import FAULT_PAYMENT_STEPWISE
from tests.support.processes import Processes, read_marker
from tests.support.waiting import wait_for


def outbox_rows(engine: Engine, saga_id: str) -> dict[str, tuple[bool, bool]]:
    """Per step message of the saga: (published, due now)."""
    with engine.connect() as c:
        rows = c.execute(
            select(
                outbox.c.body,
                outbox.c.published_at.is_not(None),
                outbox.c.available_at <= func.now(),
            ).where(outbox.c.saga_id == saga_id)
        ).all()
    return {StepMessage.from_body(body).step: (bool(p), bool(due)) for body, p, due in rows}


@pytest.mark.fault
@pytest.mark.parametrize("hook", ["in_transaction", "after_commit"])
def test_worker_killed_in_an_inline_step(
    hook: str,
    settings: Settings,
    engine: Engine,
    orch: Orchestrator,
    procs: Processes,
    tmp_path: Path,
) -> None:
    assert settings.worker_inline_steps > 0 and settings.worker_inline_reserve == 2.0
    marker = tmp_path / "marker.json"
    status, effects = expected_for("none")
    victim = orch.enqueue(
        FAULT_PAYMENT_STEPWISE,
        payment("inline", 0, hook=hook, hook_step="record_payment", marker=str(marker)),
    ).saga_id
    bystanders = {
        orch.enqueue(FAULT_PAYMENT_STEPWISE, payment("bystander", i)).saga_id: (status, effects)
        for i in range(6)
    }
    procs.relay(settings)
    first = procs.worker(settings, concurrency=2)
    wait_for(
        lambda: read_marker(marker),
        timeout=60,
        what=f"the {hook} hook of the inline record_payment step",
        report=procs.report,
    )
    held = outbox_rows(engine, victim)
    if hook == "in_transaction":
        # record_payment runs inline: its message was never due for the relay.
        assert held["record_payment"] == (False, False), held
    else:
        # record_payment committed inline (its message marked published by it);
        # the next step's message is the held one now.
        assert held["record_payment"][0] is True, held
        assert held["confirm_order"] == (False, False), held
    first.kill()

    second = procs.worker(settings, concurrency=2)
    wait_terminal(
        engine, [victim, *bystanders], timeout=120, logs=procs.report, alive=procs.running()
    )
    check_sagas(engine, {victim: (status, effects), **bystanders})
    assert doubled_rows(engine) == []
    view = views(engine, [victim])[victim]
    # Each step ran in one attempt: the kill cost no retry, only the reserve's wait.
    assert [s.attempts for s in view.steps] == [1] * len(view.steps), view.line()
    # Every message of the saga went out or was taken by an inline step; none is left.
    assert all(published for published, _ in outbox_rows(engine, victim).values())
    # The second worker ran the held step from a delivery and the rest inline.
    # (Its log line follows the commit that made the saga terminal: wait for it.)
    wait_for(
        lambda: any(
            r.get("msg") == "inline step handled" and r.get("saga_id") == victim
            for r in second.log_records()
        ),
        timeout=30,
        what="the second worker's inline step of the victim in its log",
        report=procs.report,
    )
