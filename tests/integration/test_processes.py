"""The compose deployment's process set, run locally from the same list
(compose/processes.toml) by `saga.entrypoints.processes`: migrate, chaincode, devnet, api,
relay, three workers, watcher, beat and flower, against the real PostgreSQL and
RabbitMQ and a devnet on free ports. Sagas of the ledger example go in through
the HTTP API with the bearer token; every one ends terminal, each business
effect happens once, and `saga audit` finds the database and ledger agree.

Every process is then scraped at its own metrics target (loopback only): each
exports only the work it does, and the sums over the processes equal what the
database says. A worker SIGKILLed and restarted by the supervisor comes back
under its slot's name, on its slot's port, with no file of its predecessor.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from saga.adapters.sql import create_engine
from saga.adapters.sql.tables import ledger_attempts, outbox, saga_steps, sagas
from saga.config import PREFIX, Settings
from saga.entrypoints.processes import (
    LocalProcessSet,
    ProcessSpec,
    free_port,
    load_processes,
    local_env,
    select,
)
from saga.examples.order_payment import NAME, effects
from tests.support.processes import ROOT
from tests.support.waiting import wait_for

TOKEN = "local-set-token"
SCENARIOS = ["none", "decline_payment", "none", "reject_order", "flaky_notify", "none"]
EXPECTED = {
    "none": ("completed", {"reserve", "payment", "confirm", "notify"}),
    "flaky_notify": ("completed", {"reserve", "payment", "confirm", "notify"}),
    "decline_payment": ("compensated", {"reserve", "release"}),
    "reject_order": ("compensated", {"reserve", "payment", "void", "release"}),
}


@pytest.fixture
def settings(pg_url: str, broker_settings: Settings) -> Settings:
    return replace(
        broker_settings,
        database_url=pg_url,
        definitions="saga.examples.order_payment_ledger",
        worker_concurrency=1,
        api_port=free_port(),
        api_token=TOKEN,
        relay_poll_interval=0.05,
        log_format="json",
    )


def child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({PREFIX + f.name.upper(): str(getattr(settings, f.name)) for f in fields(settings)})
    # Unset in the list: the devnet's are filled in by local_env.
    for name in ("SAGA_FABRIC_PROFILE", "SAGA_FABRIC_MSP_DIR", "SAGA_FABRIC_MSP_ID"):
        env.pop(name, None)
    env.update(
        PYTHONPATH=str(ROOT),
        FLOWER_BASIC_AUTH="operator:local-set",
        FLOWER_PORT=str(free_port()),
        SAGA_SWEEP_INTERVAL="5",
    )
    return env


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive ports nothing listens on now."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"no {count} consecutive free ports found")


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    text = httpx.get(url, headers=headers, timeout=10).raise_for_status().text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def families(samples: Samples) -> set[str]:
    """The saga_* metrics a scrape has samples of (a histogram by its name)."""
    found = set()
    for name, _ in samples:
        if not name.startswith("saga_") or name.endswith("_created"):
            continue
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        found.add(name)
    return found


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} print them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_process_list_has_every_role_and_the_devnet_only_as_the_default_ledger() -> None:
    specs = load_processes()
    names = [s.name for s in specs]
    assert names[0] == "migrate" and specs[0].job
    assert {"api", "relay", "worker", "watcher", "beat", "flower"} <= set(names)
    assert {s.name for s in specs if s.ledger == "devnet"} == {"chaincode", "devnet"}
    real = [s.name for s in select(specs, devnet=False)]
    assert "devnet" not in real and "chaincode" not in real and "watcher" in real
    assert [s.name for s in select(specs, devnet=True, without=["flower"])] == [
        n for n in names if n != "flower"
    ]


def test_the_process_set_runs_sagas_with_three_workers(settings: Settings, tmp_path: Path) -> None:
    specs: list[ProcessSpec] = select(load_processes(), devnet=True)
    env = local_env(tmp_path, specs, base=child_env(settings))
    # relay, watcher, chain executor, three workers: one port each from here.
    env["SAGA_METRICS_PORT"] = str(consecutive_free_ports(6))
    api = f"http://127.0.0.1:{settings.api_port}"
    with LocalProcessSet(specs, workdir=tmp_path, env=env, scale={"worker": 3}) as procs:

        def report() -> str:
            lines = []
            for row in procs.status():
                log = Path(row["log"]).read_text(errors="replace").splitlines()[-15:]
                lines.append(f"=== {row['process']} alive={row['alive']}\n" + "\n".join(log))
            return "\n".join(lines)

        try:
            procs.start()
        except Exception:
            print(report())
            raise
        running = Counter(row["process"].split(".")[0] for row in procs.status())
        assert running == {n: 3 if n == "worker" else 1 for n in running}
        assert set(running) == {s.name for s in specs if not s.job}

        http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        body = {"saga": NAME, "payload": {"order_id": "x", "customer_id": "c", "amount_cents": 1}}
        refused = httpx.post(f"{api}/sagas", json=body, timeout=30)
        assert refused.status_code == 401, refused.text

        kinds: dict[str, str] = {}
        for i in range(12):
            kind = SCENARIOS[i % len(SCENARIOS)]
            payload = {
                "order_id": f"local-{i}",
                "customer_id": f"customer-{i % 3}",
                "amount_cents": 1500 + i,
                "currency": "EUR",
                "simulate": kind,
            }
            r = http.post(
                "/sagas",
                json={"saga": NAME, "payload": payload},
                headers={"Idempotency-Key": f"local-{i}"},
            )
            assert r.status_code == 201, r.text
            kinds[r.json()["saga_id"]] = kind

        def terminal() -> dict[str, str] | None:
            views = {i: http.get(f"/sagas/{i}").json() for i in kinds}
            assert all(v["version"] == 2 for v in views.values())  # the ledger saga
            done = {i: v["status"] for i, v in views.items()}
            return (
                done
                if all(s in ("completed", "compensated", "failed") for s in done.values())
                else None
            )

        statuses = wait_for(
            terminal, timeout=240, interval=1, what="every saga terminal", report=report
        )
        for saga_id, kind in kinds.items():
            assert statuses[saga_id] == EXPECTED[kind][0], (saga_id, kind, statuses[saga_id])

        engine = create_engine(settings.sqlalchemy_url)
        try:
            with engine.connect() as connection:
                from sqlalchemy.orm import Session

                with Session(bind=connection) as session:
                    for saga_id, kind in kinds.items():
                        done = Counter(effects(session, saga_id))
                        assert set(done) == EXPECTED[kind][1], (kind, done)
                        assert max(done.values()) == 1, (kind, done)
        finally:
            engine.dispose()

        audit = subprocess.run(
            [sys.executable, "-m", "saga", "audit", "--json"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr

        # Every process still up, none restarted by the supervisor.
        assert all(row["alive"] and row["restarts"] == 0 for row in procs.status()), report()

        targets = check_metrics(procs, settings, api, report)
        check_worker_restart(procs, settings, targets, report)


def check_metrics(
    procs: LocalProcessSet, settings: Settings, api: str, report: Callable[[], str]
) -> dict[str, str]:
    """Scrape every process at its own target; sums over them equal the database."""
    listed = json.loads((procs.workdir / "metrics-targets.json").read_text())
    targets = {t["labels"]["process"]: t["targets"][0] for t in listed}
    assert sorted(targets) == [
        "chain-executor.1",
        "relay.1",
        "watcher.1",
        "worker.1",
        "worker.2",
        "worker.3",
    ]
    assert len(set(targets.values())) == len(targets), targets
    for process, target in targets.items():
        # No authentication on these endpoints: loopback only (7F000001 in /proc).
        port = int(target.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"0100007F"}, (process, target)

    engine = create_engine(settings.sqlalchemy_url)
    try:

        def db_count(query: Any) -> int:
            with engine.connect() as c:
                return int(c.execute(query).scalar_one())

        published_rows = (
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_not(None))
        )

        def scrapes() -> dict[str, Samples] | None:
            got = {p: scrape(f"http://{t}/metrics") for p, t in targets.items()}
            got["api.1"] = scrape(f"{api}/metrics", TOKEN)
            sent = total(got["relay.1"], "saga_relay_published_messages_total")
            inline = sum(
                total(got[w], "saga_inline_steps_total")
                for w in got
                if w.startswith(("worker.", "chain-executor."))
            )
            # The relay counts a batch just after marking it published.
            return got if sent + inline == db_count(published_rows) else None

        got = wait_for(
            scrapes, timeout=30, interval=0.5, what="relay + inline == published", report=report
        )
        # The chain executor runs the chain steps (saga up routes them to it).
        workers = [got[p] for p in got if p.startswith(("worker.", "chain-executor."))]
        # The watcher records a VALID chain step's (or reversal's) success itself, so
        # it counts those step results; the sums over steps include it.
        steppers = [*workers, got["watcher.1"]]

        def summed(name: str, **labels: str) -> float:
            return sum(total(w, name, **labels) for w in steppers)

        # Each process exports only what it does.
        assert families(got["relay.1"]) == {
            "saga_relay_published_messages_total",
            "saga_relay_batches_total",
            "saga_relay_failures_total",
        }
        step_results = {
            "saga_step_results_total",
            "saga_step_retries_total",
            "saga_compensations_total",
            "saga_sagas_finished_total",
        }
        assert all(
            f.startswith(("saga_watcher_", "saga_chain_commit")) or f in step_results
            for f in families(got["watcher.1"])
        ), families(got["watcher.1"])
        assert total(got["watcher.1"], "saga_step_results_total", result="succeeded") > 0
        # The API: what it enqueued, and the deployment's gauges read from the store.
        assert families(got["api.1"]) <= {
            "saga_enqueued_total",
            "saga_store_up",
            "saga_sagas",
            "saga_sagas_waiting_for_ledger",
            "saga_chain_transactions_in_flight",
            "saga_outbox_lag_seconds",
            "saga_outbox_unpublished",
            "saga_dead_letter_messages",
        }, families(got["api.1"])
        for w in workers:
            assert not {f for f in families(w) if f.startswith(("saga_relay", "saga_enqueued"))}

        with engine.connect() as c:
            statuses = Counter(str(s) for (s,) in c.execute(sa.select(sagas.c.status)))
            steps = list(c.execute(sa.select(saga_steps)))
        assert total(got["api.1"], "saga_enqueued_total") == sum(statuses.values()) == 12
        for status, count in statuses.items():
            assert summed("saga_sagas_finished_total", status=status) == count, status
        for step in {s.name for s in steps}:
            rows = [s for s in steps if s.name == step]
            ran = sum(1 for s in rows if s.status in ("done", "compensated"))
            compensated = sum(1 for s in rows if s.status == "compensated")
            succeeded = summed("saga_step_results_total", step=step, phase="do", result="succeeded")
            assert succeeded == ran, step
            assert summed("saga_compensations_total", step=step) == compensated, step
        attempts = db_count(sa.select(sa.func.count()).select_from(ledger_attempts))
        assert attempts > 0
        assert summed("saga_chain_transactions_total", event="prepared") == attempts
        # saga up routes chain steps to the chain executor: it prepared every one.
        executor = got["chain-executor.1"]
        assert total(executor, "saga_chain_transactions_total", event="prepared") == attempts
    finally:
        engine.dispose()
    return targets


def check_worker_restart(
    procs: LocalProcessSet,
    settings: Settings,
    targets: dict[str, str],
    report: Callable[[], str],
) -> None:
    """worker.1 SIGKILLed: the supervisor brings it back as worker1@host on its port."""
    from celery import Celery

    def node_names() -> set[str]:
        app = Celery(broker=settings.broker_url)
        try:
            return {name for reply in app.control.ping(timeout=2) for name in reply}
        finally:
            app.close()

    host = socket.gethostname()
    slots = {f"worker{i}@{host}" for i in (1, 2, 3)}
    assert wait_for(
        lambda: {n for n in node_names() if n.startswith("worker")} == slots,
        timeout=30,
        what="worker slot names",
        report=report,
    )

    victim = next(c for c in procs.children if c.label == "worker.1")
    old_pid = victim.popen.pid if victim.popen else None
    victim.signal_group(signal.SIGKILL)
    assert victim.popen is not None
    victim.popen.wait(timeout=30)

    def serving() -> bool:
        try:
            scrape(f"http://{targets['worker.1']}/metrics")
        except httpx.HTTPError:
            return False
        return True

    def back() -> bool:
        # The supervisor's loop, as `saga up` runs it (again if a start fails).
        procs.restart_dead()
        return (
            victim.alive()
            and serving()
            and {n for n in node_names() if n.startswith("worker")} == slots
        )

    # Flower and `celery inspect` see the same three nodes, not a fourth one per restart.
    wait_for(back, timeout=90, interval=0.5, what="worker.1 back as worker1", report=report)
    assert victim.restarts >= 1 and victim.popen.pid != old_pid
    directory = procs.workdir / "metrics" / "worker.1"
    dead = [p.name for p in directory.glob("*.db") if not pid_alive(int(p.stem.rsplit("_", 1)[1]))]
    assert not dead, f"files of the killed worker still summed: {dead}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
