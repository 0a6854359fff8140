"""Make docs/flower.png: Flower's task list after a run with every simulated failure
(not part of CI).

    apt-get install -y chromium
    python -m scripts.flower_screenshot [--out docs/flower.png] [--no-ledger]

Runs migrate, relay, workers, flower and, with the ledger, the devnet, the
sagafacts chaincode and the commit watcher from compose/processes.toml (the way
`saga up` does) on a scratch PostgreSQL database and on queues of its own on the
local RabbitMQ (SAGA_TEST_PG_ADMIN_URL / SAGA_TEST_AMQP_URL, as the tests). It
runs one order-payment saga per `simulate` value, with the product's defaults
(inline steps, Flower's default columns) except a 3 s chain re-check delay, so
the re-checks a settled chain step ignores show up within the run. The
declined payment runs last: it has no chain step and would otherwise be off
Flower's first page (15 rows, newest first). Then headless Chromium loads
Flower's tasks page with basic auth in the URL. The database and queues are
removed at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg

from saga.app.orchestrator import Orchestrator
from saga.bootstrap import Container
from saga.config import PREFIX, Settings
from saga.entrypoints.processes import LocalProcessSet, free_port, load_processes, local_env, select
from saga.examples.order_payment import NAME

ADMIN_URL = os.environ.get(
    "SAGA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("SAGA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
# Flower's task states that end a task (SKIPPED: a message with nothing left to do).
FINAL = {"SUCCESS", "FAILURE", "RETRY", "SKIPPED"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def rabbitmq_vhost(name: str) -> str | None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return None
    user = AMQP_URL.split("://", 1)[1].split(":", 1)[0]
    for cmd in (["add_vhost", name], ["set_permissions", "-p", name, user, ".*", ".*", ".*"]):
        if subprocess.run([ctl, *cmd], capture_output=True, check=False).returncode:
            return None
    return name


def chromium_screenshot(url: str, out: Path, *, width: int = 1600, height: int = 1040) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="flower-shot-") as profile:
        subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                # Flower fills its task table by XHR after the page loads.
                "--virtual-time-budget=8000",
                f"--screenshot={out.resolve()}",
                url,
            ],
            check=True,
            timeout=120,
            capture_output=True,
        )


def run_wave(orchestrator: Orchestrator, kinds: list[str], start: int) -> list[str]:
    """Start one saga per kind and wait until each is terminal; their ids."""
    ids = [
        orchestrator.enqueue(
            NAME,
            {
                "order_id": f"order-{1000 + start + i}",
                "customer_id": f"customer-{(start + i) % 5}",
                "amount_cents": 1250 + 10 * (start + i),
                "currency": "EUR",
                "simulate": kind,
            },
            idempotency_key=f"shot-{start + i}",
        ).saga_id
        for i, kind in enumerate(kinds)
    ]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if all(orchestrator.get(i)[0].state.status.terminal for i in ids):
            return ids
        time.sleep(0.5)
    sys.exit("the sagas did not finish in 180 s")


def wait_for_flower(url: str, auth: tuple[str, str], *, quiet: float) -> Counter[str]:
    """Wait until every task Flower knows has ended and none arrived for `quiet` s."""
    seen, since = -1, time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tasks = httpx.get(f"{url}/api/tasks", auth=auth, timeout=30).json()
        states = Counter(str(t.get("state")) for t in tasks.values())
        if len(tasks) != seen:
            seen, since = len(tasks), time.monotonic()
        elif set(states) <= FINAL and time.monotonic() - since >= quiet:
            return states
        time.sleep(0.5)
    sys.exit(f"Flower still shows unfinished tasks: {dict(states)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/flower.png"))
    parser.add_argument(
        "--no-ledger", action="store_true", help="version 1 of the example only: no devnet"
    )
    args = parser.parse_args()

    db = f"saga_flower_shot_{uuid.uuid4().hex[:8]}"
    prefix = f"flower-shot.{uuid.uuid4().hex[:8]}"
    # A vhost of its own when rabbitmqctl is at hand: task events are broadcast
    # per vhost, and other runs on the same broker would show up in the picture.
    vhost = rabbitmq_vhost(prefix)
    amqp_url = urlsplit(AMQP_URL)._replace(path="/" + vhost).geturl() if vhost else AMQP_URL
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    recheck = 3.0
    settings = Settings(
        database_url=ADMIN_URL.rsplit("/", 1)[0] + "/" + db,
        broker_url=amqp_url,
        step_queue=f"{prefix}.steps",
        dead_letter_queue=f"{prefix}.dead-letter",
        log_format="json",
        definitions=(
            "saga.examples.order_payment"
            if args.no_ledger
            else "saga.examples.order_payment_ledger"
        ),
        chain_recheck_delay=recheck,
    )
    password = secrets.token_urlsafe(12)
    auth = ("operator", password)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({PREFIX + f.name.upper(): str(getattr(settings, f.name)) for f in fields(settings)})
    env.pop("FLOWER_TASKS_COLUMNS", None)  # the picture shows Flower's default columns
    env.update(
        FLOWER_BASIC_AUTH=":".join(auth),
        FLOWER_PORT=str(port),
        FLOWER_ADDRESS="127.0.0.1",
        SAGA_WORKER_CONCURRENCY="2",
    )
    wanted = {"migrate", "relay", "worker", "flower"}
    if not args.no_ledger:
        wanted |= {"chaincode", "devnet", "watcher"}
    specs = [s for s in select(load_processes(), devnet=True) if s.name in wanted]
    workdir = Path(tempfile.mkdtemp(prefix="flower-shot-"))
    env = local_env(workdir, specs, base=env, cwd=workdir)
    try:
        with LocalProcessSet(specs, workdir=workdir, env=env, scale={"worker": 2}, say=print) as ps:
            ps.start()
            time.sleep(2)  # Flower keeps only events it heard
            orchestrator = Container(settings).orchestrator()
            ids = run_wave(orchestrator, ["none", "reject_order", "flaky_notify"], 0)
            wait_for_flower(f"http://127.0.0.1:{port}", auth, quiet=recheck + 2)
            ids += run_wave(orchestrator, ["decline_payment"], len(ids))
            states = wait_for_flower(f"http://127.0.0.1:{port}", auth, quiet=2)
            sagas = Counter(str(orchestrator.get(i)[0].state.status) for i in ids)
            print(f"sagas: {dict(sagas)}; Flower tasks: {dict(states)}")
            httpx.get(
                f"http://127.0.0.1:{port}/api/workers",
                params={"refresh": "1"},
                auth=auth,
                timeout=30,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            chromium_screenshot(f"http://operator:{password}@127.0.0.1:{port}/tasks", args.out)
            print(f"wrote {args.out}")
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        from tests.support.rabbitmq import delete_topology

        if vhost:
            subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, check=False)
        else:
            delete_topology(AMQP_URL, settings)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if workdir.exists():
            print(f"logs kept in {workdir / 'logs'}")


if __name__ == "__main__":
    main()
