"""Worker processes SIGKILLed at the two instants that matter (real PostgreSQL,
RabbitMQ, `saga relay` and `saga worker` processes).

after_commit    the step's transaction (business row, saga state, inbox record,
                next messages) has committed; the task has not returned, so the
                message is unacked. The broker redelivers it; the inbox must turn
                it into a no-op: the business row stays single.
in_transaction  the business row is written but not committed. Nothing of it
                may survive the kill; the redelivery runs the step once.

Both are injected through the test-only saga `fault-payment` (see fault_sagas):
the step stops at the instant, writes a marker with its pid, and sleeps; the
test SIGKILLs either the whole worker (process group: main process and pool
children, like a lost machine) or only the pool child running the step (the
main process must notice the lost child and requeue: reject_on_worker_lost).
Other sagas are in flight at the same time and must not suffer either.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from saga.examples.order_payment import NAME
from tests.fault.checks import (
    check_sagas,
    doubled_rows,
    enqueue_mix,
    expected_for,
    payment,
    views,
    wait_terminal,
)
from tests.fault.fault_sagas import FAULT_PAYMENT
from tests.support.processes import Processes, SagaProcess, read_marker
from tests.support.rabbitmq import queue_depth
from tests.support.waiting import wait_for

SCENARIOS = ("none", "none", "decline_payment", "reject_order", "flaky_notify")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Every step through the queue: the instants here are those of a delivered
    message and its redelivery (kills in inline steps: test_inline_kill)."""
    return replace(settings, worker_inline_steps=0)


def outcomes(worker: SagaProcess, saga_id: str, step: str, phase: str) -> list[str]:
    """The outcome of every delivery of (saga, step, phase) this worker logged."""
    return [
        str(r.get("outcome"))
        for r in worker.log_records()
        if r.get("msg") == "step message handled"
        and r.get("saga_id") == saga_id
        and r.get("step") == step
        and r.get("phase") == phase
    ]


@pytest.mark.fault
@pytest.mark.parametrize(
    ("hook", "target", "phase"),
    [
        ("after_commit", "group", "do"),
        ("after_commit", "child", "do"),
        ("in_transaction", "group", "do"),
        ("in_transaction", "child", "do"),
        # The same instants in a compensation (void_payment of a rejected order).
        ("after_commit", "group", "undo"),
        ("in_transaction", "group", "undo"),
    ],
)
def test_worker_killed_around_the_step_commit(
    hook: str,
    target: str,
    phase: str,
    settings: Settings,
    engine: Engine,
    orch: Orchestrator,
    procs: Processes,
    tmp_path: Path,
) -> None:
    step = "record_payment"
    marker = tmp_path / "marker.json"
    simulate = "reject_order" if phase == "undo" else "none"
    victim_status, victim_effects = expected_for(simulate)
    victim_id = orch.enqueue(
        FAULT_PAYMENT,
        payment(
            "victim", 0, simulate, hook=hook, hook_step=step, hook_phase=phase, marker=str(marker)
        ),
    ).saga_id
    others = {
        orch.enqueue(NAME, payment("bystander", i, SCENARIOS[i % len(SCENARIOS)])).saga_id: (
            expected_for(SCENARIOS[i % len(SCENARIOS)])
        )
        for i in range(15)
    }
    procs.relay(settings)
    first = procs.worker(settings, concurrency=2)

    info = wait_for(
        lambda: read_marker(marker),
        timeout=60,
        what=f"the {hook} hook of {step} to be reached",
        report=procs.report,
    )
    assert info["saga_id"] == victim_id
    time.sleep(0.3)  # let the pool's sibling hold a bystander message too, sometimes

    before = views(engine, [victim_id])[victim_id]
    committed, open_status, done_status = {
        "do": (["reserve", "payment"], "pending", "done"),
        "undo": (["reserve", "payment", "void"], "done", "compensated"),
    }[phase]
    if hook == "after_commit":
        # Committed: the business row, and the step recorded as done (the saga
        # may already have moved on: its next message was committed too).
        assert before.effects[: len(committed)] == committed, before.line()
        assert before.steps[1].status == done_status, before.line()
    else:
        # Inside the transaction: another connection sees nothing of the step.
        assert before.effects == committed[:-1], before.line()
        assert before.steps[1].status == open_status, before.line()

    if target == "group":
        first.kill()
        assert not first.alive()
        after = views(engine, [victim_id])[victim_id]
        assert after.effects == before.effects, after.line()
        # The unacked message went back to the queue with the worker's connection.
        wait_for(
            lambda: queue_depth(settings.broker_url, settings.step_queue) >= 1,
            timeout=20,
            what="the unacked step message to be back on the queue",
            report=procs.report,
        )
        second = procs.worker(settings, concurrency=2)
    else:
        os.kill(int(info["pid"]), signal.SIGKILL)
        second = first  # the main process survives and starts a new pool child

    # After the commit the saga may finish before the redelivery comes round
    # (its next message was committed with the step): wait for the redelivery.
    redelivered = "duplicate" if hook == "after_commit" else "applied"
    wait_for(
        lambda: redelivered in outcomes(second, victim_id, step, phase),
        timeout=60,
        what=f"the redelivered {step} message to be handled ({redelivered})",
        report=procs.report,
        alive=[second],
    )
    wait_terminal(
        engine, [victim_id, *others], timeout=120, logs=procs.report, alive=procs.running()
    )
    check_sagas(engine, {victim_id: (victim_status, victim_effects), **others})
    assert doubled_rows(engine) == []

    victim = views(engine, [victim_id])[victim_id]
    # The redelivery is the same message (same attempt), not a retry.
    assert victim.steps[1].attempts == 1, victim.line()
    assert victim.steps[1].compensation_attempts == (1 if phase == "undo" else 0), victim.line()
    seen = outcomes(second, victim_id, step, phase)
    if hook == "after_commit":
        # The redelivered message found the step done and did nothing.
        assert "duplicate" in seen, (seen, procs.report())
        assert "applied" not in seen, seen
    else:
        assert seen.count("applied") == 1, (seen, procs.report())
    if target == "child":
        assert first.alive(), procs.report()


@pytest.mark.fault
def test_two_workers_on_one_host_and_a_worker_restarted_at_once_after_sigkill(
    settings: Settings, engine: Engine, orch: Orchestrator, procs: Processes
) -> None:
    """Scale by running more `saga worker`s on one host; restart one at once after a kill.

    Every Celery worker has a remote-control queue named after its node name,
    exclusive to its connection. Two workers with the same node name on one host
    (or a worker restarted while its killed predecessor's queue still exists)
    collide on that queue, and the newcomer dies with RESOURCE_LOCKED.
    """
    expected = enqueue_mix(orch, "scale", 40)
    procs.relay(settings)
    a = procs.worker(settings, concurrency=1)
    b = procs.worker(settings, concurrency=1)

    def ready(p: SagaProcess) -> bool:
        return any(r.get("msg", "").endswith(" ready.") for r in p.log_records())

    wait_for(
        lambda: ready(a) and ready(b),
        timeout=60,
        what="both workers ready",
        report=procs.report,
        alive=[a, b],
    )
    a.kill()
    c = procs.worker(settings, concurrency=1)  # a supervisor restarts it at once
    wait_for(
        lambda: ready(c),
        timeout=60,
        what="the restarted worker ready",
        report=procs.report,
        alive=[b, c],
    )
    wait_terminal(engine, list(expected), timeout=120, logs=procs.report, alive=[b, c])
    check_sagas(engine, expected)
    assert doubled_rows(engine) == []
