"""N sagas of the example v2 (with its ledger step) through the whole real stack.

    python bench/chain_run.py [--sagas 1000] [--block-seconds 2] [--workers 2]
                              [--concurrency 2] [--out chain_run.json]

Starts, for this run only: a PostgreSQL database (migrated, dropped after), a
pair of RabbitMQ queues (deleted after), the sagafacts chaincode and a devnet
cutting a block every `--block-seconds` (or at `--block-size` transactions),
then `saga relay`, `saga watcher` and `--workers` `saga worker` processes.
Enqueues the sagas through the orchestrator (what the API calls), waits until
every one is terminal, scans the whole channel and runs the audit.

Prints and writes (JSON): wall time from the first enqueue to the last terminal
saga, sagas/s, VALID transactions, duplicates (keys with more than one VALID
creator: must be 0), the audit counts. Exit code 1 if a saga is not terminal,
a duplicate exists or the audit is not clean.

PostgreSQL and RabbitMQ are expected where DESIGN.md says (127.0.0.1, trust /
guest); SAGA_TEST_PG_ADMIN_URL and SAGA_TEST_AMQP_URL point elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test support code (devnet, processes) lives in tests/

import psycopg  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from saga.adapters.fabric import GatewayClient, SigningIdentity, load_connection_profile  # noqa: E402
from saga.adapters.fabric.ledger_scan import scan_ledger  # noqa: E402
from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine, upgrade  # noqa: E402
from saga.adapters.sql.tables import ledger_attempts, sagas  # noqa: E402
from saga.app.audit import audit  # noqa: E402
from saga.app.orchestrator import Orchestrator  # noqa: E402
from saga.config import Settings  # noqa: E402
from saga.examples.order_payment import NAME  # noqa: E402
from saga.registry_loader import load_registry  # noqa: E402
from saga_devnet.chaincode_launcher import start_chaincode  # noqa: E402
from tests.support.devnet import Devnet  # noqa: E402
from tests.support.ledger import CHAINCODE, CHAINCODE_ID  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.postgres import ADMIN_URL  # noqa: E402
from tests.support.processes import Processes  # noqa: E402
from tests.support.rabbitmq import AMQP_URL, delete_topology  # noqa: E402

TERMINAL = ("completed", "compensated", "failed")


def _payment(i: int, simulate: str) -> dict[str, Any]:
    return {
        "order_id": f"bench-{i}",
        "customer_id": f"customer-{i % 97}",
        "amount_cents": 1000 + i,
        "currency": "EUR",
        "simulate": simulate,
    }


def _statuses(engine: Any) -> Counter[str]:
    with engine.connect() as c:
        rows = c.execute(select(sagas.c.status, func.count()).group_by(sagas.c.status))
        return Counter({str(s): int(n) for s, n in rows})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument("--block-seconds", type=float, default=2.0, help="devnet batch timeout")
    parser.add_argument("--block-size", type=int, default=500, help="devnet max block size")
    parser.add_argument("--workers", type=int, default=2, help="`saga worker` processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool size of each worker")
    parser.add_argument(
        "--reject-every",
        type=int,
        default=0,
        help="every Nth saga fails its pivot and reverses its payment (0: none)",
    )
    parser.add_argument(
        "--recheck-delay",
        type=float,
        default=10.0,
        help="SAGA_CHAIN_RECHECK_DELAY: the watcher drives commits, this is the backstop",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after (s)")
    parser.add_argument("--out", default="chain_run.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="chain_run."))
    db_name = f"bench_chain_{uuid.uuid4().hex[:8]}"
    base, _, _ = ADMIN_URL.rpartition("/")
    db_url = f"{base}/{db_name}"
    prefix = f"bench.{uuid.uuid4().hex[:8]}"
    cc_address = f"127.0.0.1:{free_port()}"

    with psycopg.connect(ADMIN_URL, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db_name}"')
    chaincode = start_chaincode(cc_address, CHAINCODE_ID, work / "chaincode.log")
    devnet = Devnet(
        work / "devnet",
        {
            "batch_timeout": args.block_seconds,
            "max_message_count": args.block_size,
            "chaincodes": {
                CHAINCODE: {
                    "address": cc_address,
                    "package_id": CHAINCODE_ID,
                    "policy": "MAJORITY Endorsement",
                }
            },
        },
    )
    settings: Settings | None = None
    result: dict[str, Any] = {}
    ok = False
    try:
        upgrade(db_url)
        devnet.start()
        domain = devnet.org(1)["domain"]
        msp_dir = devnet.org_dir(1) / "users" / f"User1@{domain}" / "msp"
        settings = Settings(
            database_url=db_url,
            broker_url=AMQP_URL,
            definitions="saga.examples.order_payment_ledger",
            step_queue=f"{prefix}.steps",
            dead_letter_queue=f"{prefix}.dead-letter",
            relay_poll_interval=0.05,
            worker_concurrency=args.concurrency,
            log_format="json",
            log_level="WARNING",
            fabric_profile=str(devnet.profile(1)),
            fabric_msp_dir=str(msp_dir),
            fabric_channel=str(devnet.config["channel"]),
            chain_recheck_delay=args.recheck_delay,
        )
        engine = create_engine(settings)
        registry = load_registry(settings.definitions)
        orch = Orchestrator(registry, SqlUnitOfWorkFactory(engine))
        with Processes(work / "logs") as procs:
            services = [
                procs.relay(settings),
                procs.spawn("watcher", ["saga", "watcher", "--status-interval", "10"], settings),
            ]
            services += [
                procs.worker(settings, concurrency=args.concurrency) for _ in range(args.workers)
            ]
            time.sleep(3)  # let the workers connect before the clock starts
            started = time.monotonic()
            for i in range(args.sagas):
                reject = args.reject_every and (i + 1) % args.reject_every == 0
                orch.enqueue(NAME, _payment(i, "reject_order" if reject else "none"))
            enqueued = time.monotonic() - started
            print(f"enqueued {args.sagas} sagas in {enqueued:.1f}s", flush=True)
            last = -1
            deadline = started + args.timeout
            while True:
                counts = _statuses(engine)
                done = sum(counts[s] for s in TERMINAL)
                if done >= args.sagas:
                    break
                dead = [p.name for p in services if not p.alive()]
                if dead or time.monotonic() > deadline:
                    print(f"giving up: dead {dead}, statuses {dict(counts)}\n{procs.report()}")
                    break
                if done // 100 != last // 100:
                    print(f"  {done}/{args.sagas} terminal at {time.monotonic() - started:.0f}s")
                    last = done
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            statuses = _statuses(engine)
        profile = load_connection_profile(devnet.profile(1))
        identity = SigningIdentity.from_msp_dir(profile.msp_id, msp_dir)
        with GatewayClient.connect(profile.endpoint(), identity) as client:
            scan = scan_ledger(client, settings.fabric_channel)
        report = audit(SqlUnitOfWorkFactory(engine), registry, scan)
        scan_counts = scan.counts()
        with engine.connect() as c:
            attempt_rows = c.execute(select(func.count()).select_from(ledger_attempts)).scalar()
        terminal = sum(statuses[s] for s in TERMINAL)
        result = {
            "sagas": args.sagas,
            "terminal": terminal,
            "statuses": dict(statuses),
            "seconds": round(elapsed, 1),
            "enqueue_seconds": round(enqueued, 1),
            "sagas_per_second": round(terminal / elapsed, 2) if elapsed else None,
            "valid_transactions": scan_counts.valid,
            "invalid_transactions": scan_counts.invalid,
            "ledger_attempts": attempt_rows,
            "duplicates": scan_counts.duplicate_transactions,
            "duplicate_keys": scan_counts.duplicate_keys,
            "blocks": scan_counts.blocks,
            "audit_clean": report.clean,
            "audit": report.counts(),
            "config": {
                "block_seconds": args.block_seconds,
                "block_size": args.block_size,
                "workers": args.workers,
                "concurrency": args.concurrency,
                "recheck_delay": args.recheck_delay,
                "reject_every": args.reject_every,
            },
            "scan": asdict(scan_counts),
        }
        engine.dispose()
        ok = terminal == args.sagas and scan_counts.duplicate_transactions == 0 and report.clean
    finally:
        try:
            devnet.stop()
        except Exception:
            devnet.kill()
        chaincode.terminate()
        chaincode.wait(10)
        if settings is not None:
            delete_topology(AMQP_URL, settings)
        with psycopg.connect(ADMIN_URL, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}; logs in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
