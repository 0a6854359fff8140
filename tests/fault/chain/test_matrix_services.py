"""Crash-point matrix: RabbitMQ and PostgreSQL restarted with chain steps in every state.

Sagas are started with the devnet holding each block a second (commit_delay),
so when the server is stopped some sagas are still before their ledger step,
some have transactions submitted and waiting for their block, some committed,
some past the step or reversing it. The relay, the watcher and the workers are
not restarted by the test: they must ride out the outage (a dead relay or
watcher fails the cell at once; a dead worker would be restarted and counted).

These cells stop servers every other test on the machine uses: the outage
context managers (tests/fault/services.py) always start the server again and
wait until it answers, and the fixture below checks both once more at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest
from sqlalchemy import select

from saga.adapters.sql.tables import ledger_attempts, sagas
from tests.fault.chain.conftest import MakeStack
from tests.fault.chain.stack import ChainStack
from tests.fault.services import (
    postgres_outage,
    rabbitmq_outage,
    start_postgres,
    start_rabbitmq,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]

OUTAGE_SECONDS = 4.0
SAGAS = 16


@pytest.fixture(autouse=True)
def _servers_left_running() -> Iterator[None]:
    try:
        yield
    finally:
        start_rabbitmq()
        start_postgres()


def _states(stack: ChainStack, ids: list[str]) -> dict[str, int]:
    """Where the sagas are: before / at / after the ledger step, and their attempts' states."""
    with stack.engine.connect() as c:
        current = {r.id: (r.status, r.current) for r in c.execute(select(sagas))}
        attempts = list(c.execute(select(ledger_attempts)))
    ledger_index = 2  # reserve_funds, record_payment, record_on_ledger, ...
    where: Counter[str] = Counter()
    for saga_id in ids:
        status, index = current[saga_id]
        if status != "running":
            where[f"saga {status}"] += 1
        elif index < ledger_index:
            where["before the ledger step"] += 1
        elif index > ledger_index:
            where["past the ledger step"] += 1
    for row in attempts:
        where[f"{row.purpose} attempt {row.state}"] += 1
    return dict(where)


def _run(make_stack: MakeStack, outage: AbstractContextManager[None]) -> None:
    stack = make_stack()
    stack.devnet.set_faults(commit_delay=1.0)
    stack.relay()
    stack.watcher()
    for _ in range(2):
        stack.worker()
    expected = stack.enqueue(["none", "none", "none", "reject_order"] * (SAGAS // 4))
    ids = list(expected)

    def at_the_ledger() -> bool:
        where = _states(stack, ids)
        return bool(where.get("do attempt submitted") and where.get("do attempt committed"))

    wait_for(
        at_the_ledger,
        timeout=60,
        what="ledger transactions both submitted (waiting for a block) and committed",
        report=lambda: stack.report(ids),
        interval=0.05,
    )
    # A second wave, so some sagas have not reached their ledger step at all.
    wave = stack.enqueue(["none", "reject_order"])
    expected.update(wave)
    ids = list(expected)
    at_stop = _states(stack, ids)
    started = time.monotonic()
    with outage:
        time.sleep(OUTAGE_SECONDS)
    back = time.monotonic() - started
    stack.devnet.reset_faults()
    result = stack.verify(expected, timeout=180, states_at_stop=at_stop, down_seconds=round(back))
    assert all(p.alive() for p in stack.services), stack.procs.report()
    assert result.worker_restarts == 0, "a worker died in the outage"


def test_rabbitmq_restarted_while_chain_steps_in_every_state(make_stack: MakeStack) -> None:
    _run(make_stack, rabbitmq_outage())


def test_postgres_restarted_while_chain_steps_in_every_state(make_stack: MakeStack) -> None:
    _run(make_stack, postgres_outage())
