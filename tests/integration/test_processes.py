"""The compose deployment's process set, run locally from the same list
(compose/processes.toml) by `saga.processes`: migrate, chaincode, devnet, api,
relay, three workers, watcher, beat and flower, against the real PostgreSQL and
RabbitMQ and a devnet on free ports. Sagas of the ledger example go in through
the HTTP API with the bearer token; every one ends terminal, each business
effect happens once, and `saga audit` finds the database and ledger agree.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path

import httpx
import pytest

from saga.config import PREFIX, Settings
from saga.examples.order_payment import NAME, effects
from saga.processes import (
    LocalProcessSet,
    ProcessSpec,
    free_port,
    load_processes,
    local_env,
    select,
)
from saga.store import create_engine
from tests.support.processes import ROOT, wait_for

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
    import os

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
