"""Flower over the real RabbitMQ: real `saga relay` and `saga worker` processes run
sagas that hit every simulated failure of the example, and Flower's HTTP API
tells the truth about each step: a failed step is FAILURE (it failed for good)
or RETRY (it runs again), with the error; a step that ran is SUCCESS; task
names say which saga and step, and a compensation is named as one. Without
credentials Flower answers 401.

Flower needs no management API for this: tasks come from the workers' events
(its own auto-delete queue on the celeryev exchange) and workers from a
broadcast `inspect`. Other test sessions on the broker send events too, so the
checks look only at this test's sagas and worker.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from saga.adapters.rabbitmq import AmqpPublisher, Topology
from saga.app.orchestrator import Orchestrator
from saga.bootstrap import Container
from saga.config import Settings
from saga.core.purpose import Purpose
from saga.core.step_message import StepMessage
from saga.entrypoints.processes import listening
from saga.examples.order_payment import NAME
from saga.ports.broker import PendingMessage
from tests.support.ports import free_port
from tests.support.processes import Processes, SagaProcess
from tests.support.waiting import wait_for

AUTH = ("operator", "flower-test-secret")
SIMULATIONS = ("none", "decline_payment", "reject_order", "flaky_notify")
# Where the task's step message is in the argument line the relay writes.
ARGS = re.compile(
    r"(?P<saga>\S+) v\d+ (?P<undo>compensate )?(?P<step>\S+) attempt (?P<attempt>\d+) "
    r"saga_id=(?P<saga_id>\S+)"
)
# A task Flower has heard the end of.
FINAL = {"SUCCESS", "FAILURE", "RETRY", "SKIPPED"}


@pytest.fixture
def settings(pg_url: str, broker_settings: Settings) -> Settings:
    return replace(broker_settings, database_url=pg_url, log_format="json")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with Processes(tmp_path / "logs") as p:
        yield p


def start_flower(procs: Processes, settings: Settings) -> tuple[SagaProcess, str]:
    port = free_port()
    flower = procs.spawn(
        "flower",
        ["celery", "-A", "saga.entrypoints.celery.main", "flower"],
        settings,
        # The product's way: options from FLOWER_* variables, never the command line.
        FLOWER_BASIC_AUTH=":".join(AUTH),
        FLOWER_PORT=str(port),
        FLOWER_ADDRESS="127.0.0.1",
    )
    wait_for(
        lambda: listening(f"127.0.0.1:{port}"),
        timeout=60,
        what="Flower to listen",
        report=procs.report,
        alive=[flower],
    )
    return flower, f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Run:
    """What one step message asked for: (saga id, step, phase, attempt)."""

    saga_id: str
    step: str
    phase: str
    attempt: int


@dataclass(frozen=True)
class Sagas:
    url: str
    worker: SagaProcess
    orchestrator: Orchestrator
    ids: dict[str, str]  # simulation -> saga id

    def history(self, saga_id: str) -> list[tuple[str, Run, str]]:
        """(kind, run, error type) of each step and compensation outcome, in order."""
        out = []
        for entry in self.orchestrator.get(saga_id)[1]:
            phase = "undo" if entry.kind.startswith("compensation ") else "do"
            if entry.kind.endswith((" succeeded", " failed")) and "step" in entry.detail:
                run = Run(saga_id, entry.detail["step"], phase, int(entry.detail["attempt"]))
                out.append((entry.kind, run, str(entry.detail.get("error", ""))))
        return out


def run_sagas(settings: Settings, procs: Processes, key: str) -> Sagas:
    flower, url = start_flower(procs, settings)
    # Flower only sees events sent while it listens: give its event consumer a moment.
    time.sleep(2)
    procs.relay(settings)
    worker = procs.worker(settings, concurrency=1)
    orchestrator = Container(settings).orchestrator()
    ids = {
        simulate: orchestrator.enqueue(
            NAME,
            {"order_id": f"{key}-{i}", "customer_id": "c1", "amount_cents": 1200 + i}
            | {"currency": "EUR", "simulate": simulate},
            idempotency_key=f"{key}-{i}",
        ).saga_id
        for i, simulate in enumerate(SIMULATIONS)
    }
    wait_for(
        lambda: all(orchestrator.get(i)[0].state.status.terminal for i in ids.values()),
        timeout=120,
        what="sagas terminal",
        report=procs.report,
        alive=[worker, flower],
    )
    return Sagas(url, worker, orchestrator, ids)


def flower_tasks(sagas: Sagas, *, expected: int) -> dict[Run, dict[str, Any]]:
    """Flower's tasks of these sagas by the run they asked for, once every one has ended."""
    client = httpx.Client(base_url=sagas.url, auth=AUTH, timeout=30)
    ours = set(sagas.ids.values())

    def ended() -> dict[Run, dict[str, Any]] | None:
        tasks: dict[str, Any] = client.get("/api/tasks", params={"limit": 5000}).json()
        mine: dict[Run, dict[str, Any]] = {}
        for task in tasks.values():
            found = ARGS.search(str(task.get("args")))
            if found and found["saga_id"] in ours:
                run = Run(
                    found["saga_id"],
                    found["step"],
                    "undo" if found["undo"] else "do",
                    int(found["attempt"]),
                )
                mine[run] = task
        done = len(mine) >= expected and all(t.get("state") in FINAL for t in mine.values())
        return mine if done else None

    found: dict[Run, dict[str, Any]] = wait_for(
        ended, timeout=60, interval=1, what="every step task ended in Flower"
    )
    return found


def test_flower_shows_each_step_as_it_went_behind_basic_auth(
    settings: Settings, procs: Processes
) -> None:
    # Every step its own task, so each step and each compensation is a row in Flower.
    sagas = run_sagas(replace(settings, worker_inline_steps=0), procs, "flower")
    history = {i: sagas.history(i) for i in sagas.ids.values()}
    runs = [h for entries in history.values() for h in entries]
    tasks = flower_tasks(sagas, expected=len(runs))

    for kind, run, error in runs:
        task = tasks.get(run)
        assert task is not None, f"no task in Flower for {kind} {run}"
        step_name = f"{NAME}.{run.step}" + (".compensate" if run.phase == "undo" else "")
        assert task["name"] == step_name, (run, task["name"])
        if kind.endswith(" succeeded"):
            assert task["state"] == "SUCCESS", (kind, run, task)
        else:
            # Not a success, and the error says why.
            assert task["state"] in ("FAILURE", "RETRY"), (kind, run, task)
            assert error and error in str(task["exception"]), (kind, run, task)

    def state(simulate: str, step: str, attempt: int = 1, phase: str = "do") -> str:
        return str(tasks[Run(sagas.ids[simulate], step, phase, attempt)]["state"])

    # Failed for good: the saga compensates (or an operator is needed).
    assert state("decline_payment", "record_payment") == "FAILURE"
    assert state("decline_payment", "reserve_funds", phase="undo") == "SUCCESS"
    assert state("reject_order", "confirm_order") == "FAILURE"
    assert state("reject_order", "record_payment", phase="undo") == "SUCCESS"
    # Failed, and the step runs again.
    assert [state("flaky_notify", "notify_customer", a) for a in (1, 2, 3)] == [
        "RETRY",
        "RETRY",
        "SUCCESS",
    ]
    assert all(t["state"] == "SUCCESS" for r, t in tasks.items() if r.saga_id == sagas.ids["none"])

    # A re-check of a step the saga settled already (the commit watcher's message
    # came first): a new message for a step attempt no longer awaited. Not work.
    done = Run(sagas.ids["none"], "confirm_order", "do", 1)
    recheck = StepMessage(
        str(uuid.uuid4()), done.saga_id, NAME, 1, done.step, done.attempt, Purpose.DO
    )
    publisher = AmqpPublisher(settings.broker_url, Topology.from_settings(settings))
    try:
        publisher.publish_batch(
            [PendingMessage(0, recheck.message_id, done.saga_id, recheck.to_body())]
        )
    finally:
        publisher.close()
    client = httpx.Client(base_url=sagas.url, auth=AUTH, timeout=30)

    def recheck_task() -> dict[str, Any] | None:
        task: dict[str, Any] = client.get(f"/api/task/info/{recheck.message_id}").json()
        return task if task.get("state") in FINAL else None

    skipped = wait_for(recheck_task, timeout=60, interval=1, what="the re-check in Flower")
    assert skipped["state"] == "SKIPPED", skipped
    assert skipped["name"] == f"{NAME}.confirm_order", skipped
    assert "stale" in str(skipped["result"]), skipped

    for task in tasks.values():
        args = str(task["args"])
        for secret in ("idempotency", "envelope", "payload", "amount_cents", "flower-"):
            assert secret not in args, args
        assert str(task["worker"]).startswith(f"saga-{sagas.worker.pid}@"), task["worker"]

    def worker_listed() -> list[str] | None:
        listed = client.get("/api/workers", params={"refresh": "1"}).json()
        names = [n for n in listed if n.startswith(f"saga-{sagas.worker.pid}@")]
        return names or None

    wait_for(worker_listed, timeout=60, interval=1, what="the worker in /api/workers")

    for path in ("/api/workers", "/api/tasks", "/"):
        assert httpx.get(sagas.url + path, timeout=30).status_code == 401, path
        wrong = httpx.get(sagas.url + path, auth=("operator", "wrong"), timeout=30)
        assert wrong.status_code == 401, path


def test_a_failure_among_inline_steps_is_not_a_success(
    settings: Settings, procs: Processes
) -> None:
    # By default a task also runs the local steps that follow it (inline).
    sagas = run_sagas(replace(settings, worker_inline_steps=10), procs, "flower-inline")
    tasks = flower_tasks(sagas, expected=len(sagas.ids))
    by_saga: dict[str, list[dict[str, Any]]] = {}
    for run, task in tasks.items():
        by_saga.setdefault(run.saga_id, []).append(task)

    def states(simulate: str) -> list[str]:
        return sorted(str(t["state"]) for t in by_saga[sagas.ids[simulate]])

    def exceptions(simulate: str) -> str:
        return " ".join(str(t.get("exception")) for t in by_saga[sagas.ids[simulate]])

    assert states("none") == ["SUCCESS"] * len(by_saga[sagas.ids["none"]])
    assert "FAILURE" in states("decline_payment"), by_saga[sagas.ids["decline_payment"]]
    assert "PaymentDeclined" in exceptions("decline_payment")
    assert "FAILURE" in states("reject_order"), by_saga[sagas.ids["reject_order"]]
    assert "OrderRejected" in exceptions("reject_order")
    assert "RETRY" in states("flaky_notify"), by_saga[sagas.ids["flaky_notify"]]
    assert "CustomerUnreachable" in exceptions("flaky_notify")

    # The name says which step failed when it is not the one the message asked for.
    def failed(simulate: str) -> list[str]:
        return [str(t["name"]) for t in by_saga[sagas.ids[simulate]] if t["state"] == "FAILURE"]

    assert failed("decline_payment") == [f"{NAME}.reserve_funds > record_payment"]
    assert failed("reject_order") == [f"{NAME}.reserve_funds > confirm_order"]
