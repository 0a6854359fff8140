"""Flower over the real RabbitMQ: real `saga relay` and `saga worker` processes run
sagas, and Flower's HTTP API shows the workers and each step task with an
operator-readable argument line; without credentials it answers 401.

Flower needs no management API for this: tasks come from the workers' events
(its own auto-delete queue on the celeryev exchange) and workers from a
broadcast `inspect`. Other test sessions on the broker send events too, so the
checks look only at this test's sagas and worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from saga.bootstrap import Container
from saga.broker.celery_message import STEP_TASK
from saga.config import Settings
from saga.examples.order_payment import NAME
from saga.processes import free_port, listening
from tests.support.processes import Processes, SagaProcess, wait_for

AUTH = ("operator", "flower-test-secret")


@pytest.fixture
def settings(pg_url: str, broker_settings: Settings) -> Settings:
    # Every step its own task, so each step and the compensation appear in Flower;
    # by default a task also runs the local steps that follow it (inline), and
    # Flower shows the delivered step only (`saga show` lists every step).
    return replace(broker_settings, database_url=pg_url, log_format="json", worker_inline_steps=0)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with Processes(tmp_path / "logs") as p:
        yield p


def start_flower(procs: Processes, settings: Settings) -> tuple[SagaProcess, str]:
    port = free_port()
    flower = procs.spawn(
        "flower",
        ["celery", "-A", "workers.main", "flower"],
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


def test_flower_shows_workers_and_step_tasks_behind_basic_auth(
    settings: Settings, procs: Processes
) -> None:
    flower, url = start_flower(procs, settings)
    # Flower only sees events sent while it listens: give its event consumer a moment.
    time.sleep(2)
    procs.relay(settings)
    worker = procs.worker(settings, concurrency=1)

    orchestrator = Container(settings).orchestrator()
    payloads = [
        {"order_id": f"flower-{i}", "customer_id": "c1", "amount_cents": 1200 + i}
        | {"currency": "EUR", "simulate": "decline_payment" if i == 2 else "none"}
        for i in range(4)
    ]
    ids = [
        orchestrator.enqueue(NAME, p, idempotency_key=f"flower-{i}").saga_id
        for i, p in enumerate(payloads)
    ]

    def all_terminal() -> bool:
        return all(orchestrator.get(i)[0].state.status.terminal for i in ids)

    wait_for(
        all_terminal,
        timeout=120,
        what="sagas terminal",
        report=procs.report,
        alive=[worker, flower],
    )

    client = httpx.Client(base_url=url, auth=AUTH, timeout=30)

    def our_tasks() -> dict[str, Any] | None:
        tasks: dict[str, Any] = client.get("/api/tasks", params={"limit": 2000}).json()
        mine = {k: t for k, t in tasks.items() if any(i in str(t.get("args")) for i in ids)}
        succeeded = [t for t in mine.values() if t.get("state") == "SUCCESS"]
        # Each saga runs at least its first two steps (reserve, then pay or decline).
        return mine if len(succeeded) >= 2 * len(ids) else None

    mine = wait_for(
        our_tasks, timeout=60, interval=1, what="step tasks in Flower", report=procs.report
    )
    for task in mine.values():
        assert task["name"] == STEP_TASK
        args = str(task["args"])
        # "order-payment v1 reserve_funds attempt 1 saga_id=<uuid>"
        assert args.startswith(f"'{NAME} v1 ") or args.startswith(f"{NAME} v1 "), args
        assert " attempt " in args and "saga_id=" in args
        for secret in ("idempotency", "envelope", "payload", "amount_cents", "flower-"):
            assert secret not in args, args
    assert any("compensate" in str(t["args"]) for t in mine.values()), "no compensation task"
    assert {t["worker"] for t in mine.values()} and all(
        str(t["worker"]).startswith(f"saga-{worker.pid}@") for t in mine.values()
    )

    def worker_listed() -> list[str] | None:
        listed = client.get("/api/workers", params={"refresh": "1"}).json()
        names = [n for n in listed if n.startswith(f"saga-{worker.pid}@")]
        return names or None

    wait_for(
        worker_listed,
        timeout=60,
        interval=1,
        what="the worker in /api/workers",
        report=procs.report,
    )

    for path in ("/api/workers", "/api/tasks", "/"):
        assert httpx.get(url + path, timeout=30).status_code == 401, path
        wrong = httpx.get(url + path, auth=("operator", "wrong"), timeout=30)
        assert wrong.status_code == 401, path
