"""Metrics after a real run: `saga relay` and a prefork `saga worker` (multiprocess
metrics) on PostgreSQL and RabbitMQ, scraped over HTTP and compared with the store.

The API's GET /metrics (store and DLQ gauges read at scrape time) is checked on
the same database, behind its bearer token.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import outbox, saga_steps, sagas
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from saga.core.definitions import Registry
from saga.core.state import SagaStatus
from saga.entrypoints.http.app import create_app
from saga.examples import order_payment
from saga.examples.order_payment import NAME
from tests.support.ports import free_port
from tests.support.processes import Processes
from tests.support.waiting import wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

MIX = {"none": 6, "decline_payment": 2, "reject_order": 2, "flaky_notify": 3}


def scrape(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def saga_families(samples: Samples) -> set[str]:
    """The saga_* metrics a scrape has samples of (a histogram by its _count)."""
    names = {n.removesuffix("_count") for n, _ in samples if n.startswith("saga_")}
    return {n for n in names if not n.endswith(("_bucket", "_sum", "_created"))}


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def payment(i: int, simulate: str) -> dict[str, object]:
    return {
        "order_id": f"order-{i}",
        "customer_id": "c-1",
        "amount_cents": 1000 + i,
        "currency": "EUR",
        "simulate": simulate,
    }


def test_worker_relay_and_api_metrics_match_the_database(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    settings = replace(broker_settings, database_url=pg_url, log_format="json")
    engine = create_engine(settings)
    orch = Orchestrator(
        order_payment.register(Registry()),
        SqlUnitOfWorkFactory(engine),
        transient_errors=TRANSIENT_ERRORS,
    )
    ids = [
        orch.enqueue(NAME, payment(i * 10 + n, simulate)).saga_id
        for i, (simulate, count) in enumerate(MIX.items())
        for n in range(count)
    ]
    worker_port, relay_port = free_port(), free_port()

    def statuses() -> Counter[str]:
        with engine.connect() as c:
            return Counter(str(s) for (s,) in c.execute(select(sagas.c.status)))

    with Processes(tmp_path / "logs") as procs:
        relay = procs.relay(settings, SAGA_METRICS_PORT=str(relay_port))
        worker = procs.worker(settings, concurrency=2, SAGA_METRICS_PORT=str(worker_port))
        wait_for(
            lambda: (
                all(SagaStatus(s).terminal for s in statuses().elements())
                and sum(statuses().values()) == len(ids)
            ),
            timeout=120,
            what="every saga to finish",
            report=procs.report,
            alive=[relay, worker],
        )
        # Counters are written by the pool process before its task returns; the
        # relay counts a batch after marking it. Both are already settled here.
        w = wait_for(
            lambda: scrape(http_get(worker_port)),
            timeout=10,
            what="the worker's metrics",
            report=procs.report,
        )
        r = scrape(http_get(relay_port))

    counts = statuses()
    assert counts == {"completed": 9, "compensated": 4}, counts
    assert total(w, "saga_sagas_finished_total", status="completed") == counts["completed"]
    assert total(w, "saga_sagas_finished_total", status="compensated") == counts["compensated"]

    with engine.connect() as c:
        steps = list(c.execute(select(saga_steps)))
        published = c.execute(select(outbox.c.id).where(outbox.c.published_at.is_not(None))).all()
    for step in {s.name for s in steps}:
        rows = [s for s in steps if s.name == step]
        ran = sum(1 for s in rows if s.status in ("done", "compensated"))
        failed_attempts = sum(s.failures for s in rows)
        compensated = sum(1 for s in rows if s.status == "compensated")
        assert total(w, "saga_step_results_total", step=step, phase="do", result="succeeded") == ran
        assert total(w, "saga_step_results_total", step=step, phase="do", result="failed") == (
            failed_attempts
        ), step
        assert total(w, "saga_compensations_total", step=step) == compensated, step
        # Every attempt after the first was a retry.
        assert total(w, "saga_step_retries_total", step=step) == sum(
            s.attempts - 1 for s in rows if s.attempts
        ), step
    assert total(w, "saga_step_retries_total", step="notify_customer") == 2 * MIX["flaky_notify"]
    # One run per published message, per step fused into the transaction of the step
    # before it (its message never written), and per step run again after a later
    # step's failure rolled its fused run back: no redelivery, duplicate or stale
    # message here.
    fused = total(w, "saga_fused_steps_total")
    assert fused > 0
    undone = total(w, "saga_fused_step_runs_redone_total")
    assert undone > 0
    assert total(w, "saga_step_duration_seconds_count", kind="local") == (
        len(published) + fused + undone
    )
    assert total(w, "saga_steps_in_progress") == 0

    # A published row went out through the relay, or was taken (marked published
    # unsent) by the worker that ran its step inline.
    inline = total(w, "saga_inline_steps_total")
    assert inline > 0
    assert total(r, "saga_relay_published_messages_total") + inline == len(published)
    assert total(r, "saga_relay_batches_total") >= 1
    assert total(r, "saga_relay_failures_total") == 0
    # Each process exports only the work it does: a zero relay or sweeper counter from
    # a process that never relays or sweeps would be summed with the real one.
    assert saga_families(r) == {
        "saga_relay_published_messages_total",
        "saga_relay_batches_total",
        "saga_relay_failures_total",
    }
    assert not {f for f in saga_families(w) if f.startswith(("saga_relay_", "saga_enqueued"))}, (
        saga_families(w)
    )

    api = TestClient(create_app(orch, replace(settings, api_token="s3cret")))
    assert api.get("/metrics").status_code == 401
    response = api.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    a = scrape(response.text)
    assert total(a, "saga_store_up") == 1
    assert total(a, "saga_sagas", saga=NAME, status="completed") == counts["completed"]
    assert total(a, "saga_sagas", saga=NAME, status="compensated") == counts["compensated"]
    assert total(a, "saga_outbox_unpublished") == 0
    assert total(a, "saga_chain_transactions_in_flight") == 0
    assert ("saga_dead_letter_messages", frozenset()) in a
    assert total(a, "saga_dead_letter_messages") == 0


def test_api_scrape_leaves_out_the_dlq_gauge_when_the_broker_is_down(pg_url: str) -> None:
    port = free_port()  # nothing listens there
    settings = Settings(
        database_url=pg_url, broker_url=f"amqp://guest:guest@127.0.0.1:{port}//", metrics_timeout=1
    )
    orch = Orchestrator(
        order_payment.register(Registry()), SqlUnitOfWorkFactory(create_engine(settings))
    )
    response = TestClient(create_app(orch, settings)).get("/metrics")
    assert response.status_code == 200
    a = scrape(response.text)
    assert total(a, "saga_store_up") == 1
    assert not any(name == "saga_dead_letter_messages" for name, _ in a)
