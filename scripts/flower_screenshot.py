"""Make docs/flower.png: Flower's task list after a short run (not part of CI).

    apt-get install -y chromium
    python -m scripts.flower_screenshot [--out docs/flower.png] [--sagas 12]

Runs migrate, relay, worker and flower from compose/processes.toml (the way
`saga up` does) on a scratch PostgreSQL database and on queues of its own on the
local RabbitMQ (SAGA_TEST_PG_ADMIN_URL / SAGA_TEST_AMQP_URL, as the tests), runs
a few order-payment sagas, then lets headless Chromium load Flower's tasks page
with basic auth in the URL. The database and queues are removed at the end.
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

from saga.bootstrap import Container
from saga.config import PREFIX, Settings
from saga.examples.order_payment import NAME
from saga.processes import LocalProcessSet, free_port, load_processes, select

ADMIN_URL = os.environ.get(
    "SAGA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("SAGA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
# The compose file sets the same columns: the argument line is what an operator reads.
TASKS_COLUMNS = "name,uuid,state,args,received,runtime,worker"
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


def chromium_screenshot(url: str, out: Path, *, width: int = 1600, height: int = 900) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/flower.png"))
    parser.add_argument("--sagas", type=int, default=12)
    args = parser.parse_args()

    db = f"saga_flower_shot_{uuid.uuid4().hex[:8]}"
    prefix = f"flower-shot.{uuid.uuid4().hex[:8]}"
    # A vhost of its own when rabbitmqctl is at hand: task events are broadcast
    # per vhost, and other runs on the same broker would show up in the picture.
    vhost = rabbitmq_vhost(prefix)
    amqp_url = urlsplit(AMQP_URL)._replace(path="/" + vhost).geturl() if vhost else AMQP_URL
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    settings = Settings(
        database_url=ADMIN_URL.rsplit("/", 1)[0] + "/" + db,
        broker_url=amqp_url,
        step_queue=f"{prefix}.steps",
        dead_letter_queue=f"{prefix}.dead-letter",
        log_format="json",
    )
    password = secrets.token_urlsafe(12)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({PREFIX + f.name.upper(): str(getattr(settings, f.name)) for f in fields(settings)})
    env.update(
        FLOWER_BASIC_AUTH=f"operator:{password}",
        FLOWER_PORT=str(port),
        FLOWER_ADDRESS="127.0.0.1",
        SAGA_WORKER_CONCURRENCY="2",
        FLOWER_TASKS_COLUMNS=TASKS_COLUMNS,
    )
    specs = select(load_processes(), devnet=False)
    specs = [s for s in specs if s.name in {"migrate", "relay", "worker", "flower"}]
    workdir = Path(tempfile.mkdtemp(prefix="flower-shot-"))
    try:
        with LocalProcessSet(specs, workdir=workdir, env=env, scale={"worker": 2}, say=print) as ps:
            ps.start()
            time.sleep(2)  # Flower keeps only events it heard
            orchestrator = Container(settings).orchestrator()
            kinds = ["none", "none", "decline_payment", "none", "flaky_notify", "reject_order"]
            ids = [
                orchestrator.enqueue(
                    NAME,
                    {
                        "order_id": f"order-{1000 + i}",
                        "customer_id": f"customer-{i % 5}",
                        "amount_cents": 1250 + 10 * i,
                        "currency": "EUR",
                        "simulate": kinds[i % len(kinds)],
                    },
                    idempotency_key=f"shot-{i}",
                ).saga_id
                for i in range(args.sagas)
            ]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(
                orchestrator.get(i)[0].state.status.terminal for i in ids
            ):
                time.sleep(0.5)
            states = Counter(str(orchestrator.get(i)[0].state.status) for i in ids)
            print(f"sagas: {dict(states)}")
            if sum(states.values()) != len(ids) or not all(
                orchestrator.get(i)[0].state.status.terminal for i in ids
            ):
                sys.exit(f"the sagas did not finish; logs in {workdir / 'logs'}")
            time.sleep(2)
            httpx.get(
                f"http://127.0.0.1:{port}/api/workers",
                params={"refresh": "1"},
                auth=("operator", password),
                timeout=30,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            chromium_screenshot(f"http://operator:{password}@127.0.0.1:{port}/tasks", args.out)
            print(f"wrote {args.out}")
    finally:
        from tests.support.rabbitmq import delete_topology

        if vhost:
            subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, check=False)
        else:
            delete_topology(AMQP_URL, settings)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
