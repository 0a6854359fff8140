"""PostgreSQL failover in the middle of a run: the primary crashes, the standby is promoted.

A real primary and streaming standby of our own (tools/saga_cluster/postgres.py,
never the shared server on 5432). Every process (relay, worker, beat with the
sweeper, the API, the commit watcher) gets one multi-host URL with
target_session_attrs=read-write and is NOT restarted: it must find the new
primary by itself.

Synchronous replication (the setting the guarantees need): no acknowledged
transaction is lost, so every saga ends as expected, each business row once,
no step message applied twice, nothing dead-lettered.

Asynchronous replication: the promoted standby lacks what the old primary
committed after the standby fell behind. The test makes that window on purpose
(the standby is stopped, then the primary crashes) and checks what the product
then does: sagas whose progress was lost are re-driven by the sweeper and end
with their business rows once on the new primary; messages for sagas the new
primary never heard of are dead-lettered with a reason that says so.

Figures (sagas in flight at the fault, outcomes, recovery time) are printed on
one line starting "failover figures" (run with -s to see them).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import saga_history, sagas
from saga.app.orchestrator import Orchestrator
from saga.client import SagaClient
from saga.config import Settings
from saga.examples.order_payment import NAME as ORDER_PAYMENT
from saga.registry_loader import load_registry
from saga_cluster.postgres import PostgresPair
from tests.fault.checks import (
    MIX,
    TERMINAL,
    check_sagas,
    doubled_rows,
    enqueue_mix,
    expected_for,
    open_count,
    payment,
    terminal_count,
    unpublished,
    wait_terminal,
)
from tests.fault.failover_sagas import NAME as FAILOVER_SAGA
from tests.fault.test_service_restart import applied_twice
from tests.support.devnet import Devnet
from tests.support.dlq import saga_cli, saga_cli_json
from tests.support.ports import free_port
from tests.support.postgres_pair import migrated_database
from tests.support.processes import Processes, SagaProcess
from tests.support.rabbitmq import queue_depth
from tests.support.waiting import wait_for

DEFINITIONS = "saga.examples.order_payment,tests.fault.failover_sagas"
SAGAS = 120
# Enqueued through the API by a client while the failover happens.
API_SAGAS = 20
# How long nothing takes writes: the primary is dead, the standby not yet promoted
# (what a failover manager's detection takes, shortened).
DETECTION_SECONDS = 2.0


def _settings(base: Settings, url: str, devnet: Devnet, **more: object) -> Settings:
    domain = devnet.org(1)["domain"]
    values: dict[str, object] = {
        "database_url": url,
        "definitions": DEFINITIONS,
        "relay_poll_interval": 0.05,
        "worker_prefetch": 1,
        "worker_inline_reserve": 2.0,
        "log_format": "json",
        "api_port": free_port(),
        "fabric_profile": str(devnet.profile(1)),
        "fabric_msp_dir": str(devnet.org_dir(1) / "users" / f"User1@{domain}" / "msp"),
        "fabric_channel": str(devnet.config["channel"]),
        # The sweeper queries the store every second, so it too meets the failover;
        # with the default grace it re-drives nothing a busy run merely delays.
        "sweep_interval": 1.0,
    }
    values.update(more)
    return replace(base, **values)  # type: ignore[arg-type]


def _orchestrator(engine: Engine) -> Orchestrator:
    return Orchestrator(
        load_registry(DEFINITIONS), SqlUnitOfWorkFactory(engine), transient_errors=TRANSIENT_ERRORS
    )


def _watcher(procs: Processes, settings: Settings) -> SagaProcess:
    return procs.spawn(
        "watcher", ["saga", "watcher", "--poll-interval", "0.2", "--status-interval", "1"], settings
    )


def _first_terminal_after(engine: Engine, since: datetime) -> datetime | None:
    with engine.connect() as c:
        value = c.execute(
            select(func.min(sagas.c.updated_at)).where(
                sagas.c.status.in_(TERMINAL), sagas.c.updated_at > since
            )
        ).scalar_one()
    return value


def _statuses(engine: Engine, ids: list[str]) -> Counter[str]:
    with engine.connect() as c:
        return Counter(
            str(s) for s in c.execute(select(sagas.c.status).where(sagas.c.id.in_(ids))).scalars()
        )


def _worker_outcomes(workers: list[SagaProcess]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for worker in workers:
        for r in worker.log_records():
            if r.get("msg") == "step message handled":
                seen[str(r.get("outcome"))] += 1
    return seen


class ApiClientThread(threading.Thread):
    """A service enqueuing through the HTTP API, one saga every `pause` seconds,
    each with its own idempotency key (the client retries a 503 with the same key)."""

    def __init__(self, base_url: str, n: int, pause: float) -> None:
        super().__init__(daemon=True)
        self.base_url, self.n, self.pause = base_url, n, pause
        self.expected: dict[str, tuple[str, list[str]]] = {}
        self.errors: list[str] = []
        self.retried = 0

    def run(self) -> None:
        with SagaClient(self.base_url, retries=30, backoff=0.2, max_backoff=1.0) as client:
            for i in range(self.n):
                simulate = MIX[i % len(MIX)]
                try:
                    saga_id = client.enqueue(
                        ORDER_PAYMENT,
                        payment("api-failover", i, simulate),
                        idempotency_key=f"api-failover-{i}",
                    )
                except Exception as exc:
                    self.errors.append(f"{i}: {type(exc).__name__}: {exc}")
                    continue
                self.expected[saga_id] = expected_for(simulate)
                time.sleep(self.pause)
            self.retried = client.attempts - self.n


@pytest.mark.fault
@pytest.mark.timeout(600)
def test_primary_crash_and_promotion_with_synchronous_replication(
    pg_pair_factory: Callable[..., PostgresPair],
    broker_settings: Settings,
    devnet: Devnet,
    procs: Processes,
) -> None:
    pair = pg_pair_factory(synchronous="on")
    url = migrated_database(pair)
    settings = _settings(broker_settings, url, devnet)
    engine = create_engine(url)
    try:
        expected = enqueue_mix(_orchestrator(engine), "pg-failover", SAGAS)
        ids = list(expected)
        relay = procs.relay(settings)
        worker = procs.worker(settings, concurrency=2)
        beat = procs.spawn("beat", ["saga", "beat"], settings)
        api = procs.spawn("api", ["saga", "api"], settings)
        watcher = _watcher(procs, settings)
        survivors = [relay, worker, beat, api, watcher]
        base_url = f"http://127.0.0.1:{settings.api_port}"
        wait_for(
            lambda: SagaClient(base_url, retries=0).health(),
            timeout=60,
            what="the API to answer",
            report=procs.report,
            alive=survivors,
        )
        wait_for(
            lambda: terminal_count(engine, ids) >= SAGAS // 8,
            timeout=120,
            what=f"{SAGAS // 8} sagas to finish before the fault",
            report=procs.report,
            alive=survivors,
        )
        client = ApiClientThread(base_url, API_SAGAS, pause=0.1)
        client.start()
        time.sleep(0.5)  # the client is enqueuing when the primary dies

        in_flight = open_count(engine, ids)
        fault_at = datetime.now(UTC)
        fault_clock = time.monotonic()
        old = pair.primary
        pair.stop(old, "immediate")
        time.sleep(DETECTION_SECONDS)
        pair.promote(pair.standby)
        promoted_at = datetime.now(UTC)
        engine.dispose()  # the test's own reads (see the asynchronous case)
        promote_seconds = time.monotonic() - fault_clock

        client.join(timeout=180)
        assert not client.is_alive(), "the API client is still enqueuing"
        assert client.errors == [], client.errors
        assert len(client.expected) == API_SAGAS
        expected.update(client.expected)
        ids = list(expected)
        wait_terminal(engine, ids, timeout=300, logs=procs.report, alive=survivors)

        first_after = _first_terminal_after(engine, promoted_at)
        assert first_after is not None
        recovery = (first_after - fault_at).total_seconds()
        check_sagas(engine, expected)
        assert doubled_rows(engine) == []
        assert applied_twice([worker]) == []
        assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 0
        assert unpublished(engine) == 0
        assert all(p.alive() for p in survivors), procs.report()
        # The fault struck mid-run.
        assert 0 < in_flight < SAGAS, in_flight
        outcomes = _worker_outcomes([worker])
        print(
            "failover figures "
            + json.dumps(
                {
                    "replication": "synchronous (on)",
                    "sagas": len(ids),
                    "through_api": API_SAGAS,
                    "api_requests_retried": client.retried,
                    "in_flight_at_fault": in_flight,
                    "outcomes": dict(_statuses(engine, ids)),
                    "doubled_rows": len(doubled_rows(engine)),
                    "applied_twice": len(applied_twice([worker])),
                    "worker_outcomes": dict(outcomes),
                    "dead_lettered": 0,
                    "fault_to_promoted_s": round(promote_seconds, 2),
                    "recovery_s": round(recovery, 2),
                }
            )
        )
    finally:
        engine.dispose()


@pytest.mark.fault
@pytest.mark.timeout(600)
def test_asynchronous_failover_loses_commits_and_the_product_says_so(
    pg_pair_factory: Callable[..., PostgresPair],
    broker_settings: Settings,
    devnet: Devnet,
    procs: Processes,
) -> None:
    """The standby stops receiving (down), the primary goes on committing, then dies.

    - KNOWN sagas: accepted and replicated, their first message relayed; then run
      to completion on the old primary only. The new primary has them at their
      first step with nothing on the way: the sweeper re-drives them and they
      complete again there, each business row once (the old rows went with the
      old primary).
    - LOST sagas: accepted on the old primary only, their first message relayed
      to the broker. The new primary never heard of them: each message is
      dead-lettered with a reason naming the saga and the failover.
    """
    known_n, lost_n = 20, 10
    pair = pg_pair_factory(synchronous=None)
    url = migrated_database(pair)
    # Re-drive within seconds (the sagas' steps time out after 2 s), and never mark
    # a saga stuck while the restarted worker is still starting.
    settings = _settings(
        broker_settings,
        url,
        devnet,
        sweep_grace=1.0,
        sweep_redrive_interval=2.0,
        sweep_max_redrives=1000,
    )
    engine = create_engine(url)
    orch = _orchestrator(engine)
    try:
        relay = procs.relay(settings)
        known = [orch.enqueue(FAILOVER_SAGA, payment("known", i)).saga_id for i in range(known_n)]
        wait_for(lambda: unpublished(engine) == 0, 60, "the relay to publish", report=procs.report)
        pair.wait_replayed()

        # The standby falls behind for good: everything from here is on the old primary only.
        standby = pair.standby
        pair.stop(standby, "fast")
        worker = procs.worker(settings, concurrency=2)
        wait_terminal(engine, known, timeout=120, logs=procs.report, alive=[relay, worker])
        worker.stop()
        wait_for(lambda: unpublished(engine) == 0, 60, "the relay to publish", report=procs.report)
        # A message the stopped worker had handled but not yet acknowledged goes
        # back to the queue (at least once): on the new primary it is the known
        # saga's awaited message again, so that saga needs no re-drive.
        redelivered = queue_depth(settings.broker_url, settings.step_queue)
        lost = [orch.enqueue(FAILOVER_SAGA, payment("lost", i)).saga_id for i in range(lost_n)]
        wait_for(lambda: unpublished(engine) == 0, 60, "the relay to publish", report=procs.report)
        assert queue_depth(settings.broker_url, settings.step_queue) == redelivered + lost_n

        fault_at = datetime.now(UTC)
        pair.stop(pair.primary, "immediate")
        pair.start(standby)
        pair.promote(standby)
        promoted_at = datetime.now(UTC)
        # The test's own reads: its pooled connections died with the old primary
        # (the product's processes are left to find out by themselves).
        engine.dispose()

        worker = procs.worker(settings, concurrency=2)
        beat = procs.spawn("beat", ["saga", "beat"], settings)
        watcher = _watcher(procs, settings)
        survivors = [relay, worker, beat, watcher]
        # What the new primary holds: the known sagas at their first step, no lost one.
        with engine.connect() as c:
            rows = dict(c.execute(select(sagas.c.id, sagas.c.status)).all())
        assert set(rows) == set(known), "the new primary should hold exactly the known sagas"
        assert set(rows.values()) == {"running"}, rows

        wait_terminal(engine, known, timeout=180, logs=procs.report, alive=survivors)
        check_sagas(engine, {s: expected_for("none") for s in known})
        assert doubled_rows(engine) == []
        with engine.connect() as c:
            redriven = c.execute(
                select(func.count(func.distinct(saga_history.c.saga_id))).where(
                    saga_history.c.kind == "sweeper re-drive"
                )
            ).scalar_one()
        assert known_n - redelivered <= redriven <= known_n, (redriven, redelivered)

        wait_for(
            lambda: queue_depth(settings.broker_url, settings.dead_letter_queue) == lost_n,
            60,
            f"the {lost_n} messages of lost sagas to be dead-lettered",
            report=procs.report,
            alive=survivors,
        )
        # What the README tells the operator to run.
        dead = {m["saga_id"]: m["reason"] for m in saga_cli_json(["dlq", "list"], settings)}
        assert set(dead) == set(lost), dead
        for saga_id, reason in dead.items():
            assert saga_id in reason and "asynchronous replication" in reason, reason
        drop = ["dlq", "drop", "--reason", "asynchronous replication", "--yes"]
        saga_cli([*drop, "--why", "lost in failover"], settings)
        assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 0
        reasons = set(dead.values())
        first_after = _first_terminal_after(engine, promoted_at)
        assert first_after is not None
        assert all(p.alive() for p in survivors), procs.report()
        print(
            "failover figures "
            + json.dumps(
                {
                    "replication": "asynchronous",
                    "known_sagas": known_n,
                    "lost_sagas": lost_n,
                    "known_completed_again": _statuses(engine, known)["completed"],
                    "redriven_by_sweeper": redriven,
                    "redelivered_before_fault": redelivered,
                    "dead_lettered_unknown_saga": len(dead),
                    "doubled_rows": len(doubled_rows(engine)),
                    "recovery_s": round((first_after - fault_at).total_seconds(), 2),
                    "sample_reason": sorted(reasons)[0],
                }
            )
        )
    finally:
        engine.dispose()
