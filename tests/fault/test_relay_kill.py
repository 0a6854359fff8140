"""The relay killed between publish and mark, and relays running side by side,
end to end: real `saga worker` processes consume what the relays publish, and
the DATABASE is checked afterwards (every saga terminal with its expected
outcome, each business action exactly once).

The broker-level versions (what reaches the queue) are in
tests/integration/test_relay_faults.py; these add the workers and the inbox.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from saga.adapters.sql.tables import outbox
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from tests.fault.checks import check_sagas, doubled_rows, enqueue_mix, open_count, wait_terminal
from tests.support.processes import Processes, SagaProcess
from tests.support.waiting import wait_for

KILLS = 6


def outcomes_by_task(workers: list[SagaProcess]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for worker in workers:
        for r in worker.log_records():
            if r.get("msg") == "step message handled":
                seen.setdefault(str(r.get("task_id")), []).append(str(r.get("outcome")))
    return seen


@pytest.mark.fault
def test_relay_killed_between_publish_and_mark_gives_only_dropped_duplicates(
    settings: Settings,
    engine: Engine,
    orch: Orchestrator,
    procs: Processes,
    tmp_path: Path,
) -> None:
    expected = enqueue_mix(orch, "relay-kill", 60)
    worker = procs.worker(settings, concurrency=2)
    pause_file = tmp_path / "relay-paused.json"
    # The broker engineer's relay process: the product's run_relay with a hook
    # that, after the first batch is confirmed and before it is marked, writes
    # the batch's row ids and hangs.
    victim = procs.module(
        "pausing-relay",
        "tests.support.relay_process",
        settings,
        SAGA_TEST_RELAY_PAUSE_FILE=str(pause_file),
        SAGA_RELAY_BATCH_SIZE="20",
    )
    wait_for(
        lambda: pause_file.exists() and pause_file.read_text(),
        timeout=60,
        what="the relay to stop between publish and mark",
        report=procs.report,
    )
    row_ids: list[int] = json.loads(pause_file.read_text())
    assert len(row_ids) == 20
    with engine.connect() as c:
        rows = c.execute(
            select(outbox.c.message_id, outbox.c.published_at).where(outbox.c.id.in_(row_ids))
        ).all()
    batch = {r.message_id for r in rows}
    # Confirmed by the broker, not marked.
    assert len(batch) == 20 and all(r.published_at is None for r in rows)
    # The workers get the confirmed batch while the relay hangs.
    wait_for(
        lambda: sum(1 for m in batch if "applied" in outcomes_by_task([worker]).get(m, [])) == 20,
        timeout=60,
        what="the workers to run the first copy of the confirmed batch",
        report=procs.report,
    )
    victim.kill()

    procs.relay(settings)  # a supervisor restarts it; it publishes the batch again
    wait_terminal(engine, list(expected), timeout=150, logs=procs.report, alive=procs.running())
    check_sagas(engine, expected)
    assert doubled_rows(engine) == []

    # Each message of the killed batch: applied once, then dropped by the inbox.
    wait_for(
        lambda: all(
            Counter(outcomes_by_task([worker]).get(m, []))["duplicate"] >= 1 for m in batch
        ),
        timeout=30,
        what="every republished message of the killed batch to be dropped as a duplicate",
        report=procs.report,
    )
    seen = outcomes_by_task([worker])
    for message_id in batch:
        assert Counter(seen[message_id])["applied"] == 1, (message_id, seen[message_id])
    applied_twice = [t for t, o in seen.items() if o.count("applied") > 1]
    assert applied_twice == []


@pytest.mark.fault
def test_two_relays_and_relays_killed_at_random_while_sagas_flow(
    settings: Settings,
    engine: Engine,
    orch: Orchestrator,
    procs: Processes,
) -> None:
    # Small batches so both relays take a share and kills often land mid-batch.
    settings = replace(settings, relay_batch_size=10)
    expected = enqueue_mix(orch, "two-relays", 150)
    workers = [procs.worker(settings, concurrency=2)]
    relays = [procs.relay(settings), procs.relay(settings)]
    rng = random.Random(7)
    # Sagas still open at each kill, for a kill of a live relay only.
    open_at_kills: list[int] = []
    started = time.monotonic()
    # Chaos for a while: SIGKILL a random relay, a supervisor starts a new one.
    while len(open_at_kills) < KILLS and time.monotonic() - started < 40:
        time.sleep(rng.uniform(0.3, 1.2))
        i = rng.randrange(len(relays))
        victim = relays[i]
        assert victim.alive(), procs.report()
        victim.kill()
        assert victim.returncode == -9, victim.tail()
        open_at_kills.append(open_count(engine, list(expected)))
        relays[i] = procs.relay(settings)
    wait_terminal(engine, list(expected), timeout=180, logs=procs.report, alive=procs.running())
    check_sagas(engine, expected)
    assert doubled_rows(engine) == []
    seen = outcomes_by_task(workers)
    applied_twice = [t for t, o in seen.items() if o.count("applied") > 1]
    assert applied_twice == []
    # Every kill struck a running relay while sagas were still in flight.
    assert len(open_at_kills) == KILLS and min(open_at_kills) > 0, open_at_kills
    assert all(r.alive() for r in relays), procs.report()
