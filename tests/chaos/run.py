"""The chaos run: load, faults at random (seeded) times, quiescence, invariants.

    python -m tests.chaos run [--sagas 2000] [--seed N] [--baseline naive] [--out chaos.json]

The stack is the deployment's own process set (compose/processes.toml through
saga.entrypoints.processes.LocalProcessSet, as `saga up` runs it): migrate, the sagafacts
chaincode, a devnet on free ports, the HTTP API, the relay, `--workers` Celery
workers (prefork), the commit watcher and beat (the sweeper), on the real
PostgreSQL (a database of its own, dropped after) and RabbitMQ (queues of their
own, deleted after).

Workload: `--sagas` order payments through the HTTP API (SagaClient, one
idempotency key per saga), a seeded mix of local-only sagas (v1's steps under
tests.chaos.sagas.LOCAL) and ledger sagas (v2, with the record_on_ledger chain
step), some `simulate`d to fail (decline_payment and reject_order compensate,
flaky_notify fails twice then completes); a share of requests is sent twice on
purpose, and requests refused while a server is down are retried with the same
key. At most `--window` sagas are in flight, so the load lasts as long as the
run. A few poison messages are published straight onto the step queue.

Faults, at seeded points of the run (a fraction of sagas terminal, plus a
seeded delay): SIGKILL of a worker / the relay / the watcher (the process group;
restarted after a seeded downtime, as a supervisor would), a RabbitMQ restart, a
PostgreSQL restart (tests/fault/services.py: the servers always come back), a
devnet SIGKILL and restart, a chaincode server SIGKILL and restart. The seed is
printed; `--seed` replays the same workload and fault plan.

Then quiescence (bounded): every accepted saga terminal, no outbox row
unpublished, the step queue empty, every ledger attempt settled. Then the
checks (see `check`): nothing lost or stuck, outcomes as the scenarios say,
local business writes once each and every compensation matched to its step,
per chain step exactly one VALID transaction (none for sagas compensated before
the ledger step), the DLQ holds exactly the injected poison, `saga audit` exits 0.

`--ledger fabric [--fabric-version 2.5.16|3.1.5|DIR]` runs the same on a REAL
Fabric network (saga_fabricnet, tests/chaos/ledgers.py) instead of the devnet and
its chaincode process, every product process pointed at it through SAGA_FABRIC_*;
its ledger outages (chaincode, peer0.org2, peer0.org1, the Raft leader; 15-25 s
each) replace devnet_kill. On top of the checks above: per fault, the seconds from
its end to the first ledger saga completed and chain step done after it, and how
many sagas waited for the ledger (history "waiting for the ledger") or spent a try
of their chain step on an outage. The ledger scan reads the real blocks via qscc.

`--ledger fabric --topology ha` runs it on the HA topology (tests/chaos/topology.py):
a three-node RabbitMQ cluster of the run's own (quorum queues on all three, every
process given the three URLs), a PostgreSQL primary with a synchronous standby (every
process given both hosts, target_session_attrs=read-write) and a network with two
Org1 peers. Its faults: the node leading the step queue SIGKILLed and started again,
the primary stopped (immediate) and the standby promoted (once per run: the old
primary cannot come back without a rebuild, so a second failover has no standby), the
Raft leader SIGKILLed and started again, peer0.org1 (the gateway) SIGKILLed and started
again, beside the process kills. Per fault the result adds the sagas open as it struck,
how those ended, duplicates among them (a second VALID record or a doubled local
write), and the seconds from its start to the first saga completed after it.

`--baseline naive` runs the same workload and faults with tests.chaos.naive_sagas
(a ledger step that endorses and submits a new transaction on every try) and
counts its duplicates the same way (VALID payment transactions per saga beyond one).
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import tempfile
import time
import traceback
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg

from saga.adapters.sql import create_engine
from saga.client import SagaClient
from saga.config import Settings
from saga_fabricnet import FabricRelease
from tests.chaos.checks import (
    check,
    in_flight_outcomes,
    invariants,
    ledger_scan,
    ledger_waits,
    recovery,
    run_audit,
)
from tests.chaos.faults import Injector
from tests.chaos.plan import ChaosConfig, plan_faults, plan_poison, plan_workload
from tests.chaos.progress import Progress
from tests.chaos.quiescence import wait_quiet
from tests.chaos.stack import Stack
from tests.chaos.topology import HaTopology
from tests.chaos.workload import run_workload
from tests.fault.services import start_postgres, start_rabbitmq
from tests.support.ports import free_port
from tests.support.postgres import ADMIN_URL
from tests.support.rabbitmq import AMQP_URL, delete_topology


def run(config: ChaosConfig) -> dict[str, Any]:
    """One chaos run; returns the result (also written to config.out as JSON)."""
    config.check()
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    config.seed = seed
    say = config.say
    say(
        f"chaos run ({config.baseline}, {config.ledger}): {config.sagas} sagas, seed {seed} "
        f"(--seed {seed} replays)"
    )
    rng = random.Random(seed)
    plans = plan_workload(rng, config)
    fault_plan = plan_faults(rng, config)
    poison_at = plan_poison(rng, config)
    say(
        "fault plan: "
        + ", ".join(f"{p.kind}@{p.at:.2f}" for p in fault_plan)
        + f"; poison at sagas {sorted(poison_at)}"
    )

    run_id = uuid.uuid4().hex[:8]
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix=f"chaos.{run_id}."))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    db_name = f"chaos_{run_id}"
    base, _, _ = ADMIN_URL.rpartition("/")
    database_url, broker_url = f"{base}/{db_name}", AMQP_URL
    topology: HaTopology | None = None
    if config.topology == "ha":
        say("[ha] starting a 3-node RabbitMQ cluster and a PostgreSQL primary + sync standby")
        topology = HaTopology.start(db_name)
        database_url, broker_url = topology.database_url, topology.broker_url
    settings = Settings(
        database_url=database_url,
        broker_url=broker_url,
        # Replicated on every node of a cluster (the default; said for the HA run).
        queue_type="quorum",
        definitions=config.definitions,
        step_queue=f"chaos.{run_id}.steps",
        dead_letter_queue=f"chaos.{run_id}.dead-letter",
        relay_poll_interval=0.05,
        worker_concurrency=config.concurrency,
        api_port=free_port(),
        api_token=secrets.token_urlsafe(16),
        log_format="json",
        log_level="WARNING",
        chain_recheck_delay=5.0,
        sweep_interval=10.0,
        sweep_grace=30.0,
        sweep_redrive_interval=20.0,
        sweep_max_redrives=20,
        sweep_abandon_after=120.0,
    )
    if topology is None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{db_name}"')
    engine = create_engine(settings)
    try:
        stack = Stack(config, workdir, settings)
    except BaseException:
        # The clusters started above are processes of ours: none outlives the run.
        engine.dispose()
        if topology is not None:
            topology.close()
        raise
    progress = Progress(engine)
    result: dict[str, Any] = {
        "seed": seed,
        "baseline": config.baseline,
        "ledger_kind": config.ledger,
        "topology": config.topology,
        "sagas_planned": config.sagas,
        "workdir": str(workdir),
        "config": {
            "workers": config.workers,
            "concurrency": config.concurrency,
            "ledger_share": config.ledger_share,
            "resend_share": config.resend_share,
            "window": config.window,
            "faults": config.faults,
            "fabric": _release_name(config.fabric) if config.ledger == "fabric" else None,
            "batch_timeout": config.batch_timeout if config.ledger == "fabric" else None,
        },
    }
    injector: Injector | None = None
    try:
        say(f"starting the process set in {workdir}")
        stack.start()
        t0 = time.monotonic()
        progress.start()
        injector = Injector(fault_plan, stack, progress, config, t0, topology)
        injector.start()
        with SagaClient(
            f"http://127.0.0.1:{settings.api_port}",
            settings.api_token,
            timeout=30,
            retries=4,
            backoff=0.3,
            max_backoff=3.0,
        ) as client:
            workload = run_workload(plans, poison_at, client, progress, settings, config, injector)
        say(
            f"[load] done in {workload.seconds:.0f}s: {len(workload.accepted)} accepted, "
            f"{len(workload.refused)} refused, {workload.resends} sent twice"
        )
        # Every planned fault fires (they are placed before 85% terminal), bounded.
        if not injector.finished.wait(config.quiescence_timeout):
            say("[fault] plan not finished in time; aborting the rest")
            injector.abort()
        faults_done = time.monotonic()
        quiet = wait_quiet(engine, settings, config)
        total = time.monotonic() - t0
        say(
            f"[quiet] {'reached' if quiet.reached else 'NOT reached'} {quiet.seconds:.0f}s after "
            f"the last fault ({total:.0f}s into the run)"
        )
        progress.stop()
        recovery(engine, injector.done)
        waits = ledger_waits(engine, list(workload.accepted))
        scan = ledger_scan(stack.env, stack.env["SAGA_FABRIC_CHANNEL"])
        checked = check(engine, workload, scan, settings, config.baseline)
        in_flight_outcomes(engine, injector.done, injector.in_flight_ids, scan, config.baseline)
        audit_rc, audit_data = run_audit(stack.env, workdir)
        result.update(
            {
                "sagas_accepted": len(workload.accepted),
                "requests": {
                    "enqueue_calls": workload.requests,
                    "http_requests": workload.http_attempts,
                    "sent_twice_on_purpose": workload.resends,
                    "retried_after_server_error": workload.retried_after_error,
                    "refused": len(workload.refused),
                },
                "faults": [asdict(f) for f in injector.done],
                "faults_by_kind": dict(Counter(f.kind for f in injector.done)),
                "fault_errors": [asdict(f) for f in injector.done if f.error],
                "unplanned_restarts": stack.unplanned_restarts(),
                "quiescence": asdict(quiet),
                "seconds": {
                    "total": round(total, 1),
                    "load": round(workload.seconds, 1),
                    "to_quiescence_after_last_fault": round(time.monotonic() - faults_done, 1)
                    if quiet.reached
                    else None,
                },
                "ledger": asdict(scan.counts()),
                "ledger_waits": waits,
                "fabric_version": stack.fabric.version if stack.fabric else None,
                "audit": {"exit_code": audit_rc, "counts": audit_data.get("counts", audit_data)},
                **checked,
            }
        )
        result["invariants"] = invariants(result, config)
        result["ok"] = all(v == 0 for v in result["invariants"].values())
    except BaseException:
        result["ok"] = False
        result["error"] = traceback.format_exc()
        say(result["error"])
        say(stack.report())
        raise
    finally:
        if injector is not None:
            injector.abort()
        progress.stop()
        if topology is None:
            with contextlib.suppress(Exception):
                # A server left down by an interrupted fault comes back before anything else.
                start_rabbitmq()
                start_postgres()
        stack.stop()
        engine.dispose()
        if topology is not None:
            # The clusters are the run's own: nothing to keep once they are gone.
            topology.close()
        elif not config.keep:
            with contextlib.suppress(Exception):
                delete_topology(AMQP_URL, settings)
            with (
                contextlib.suppress(Exception),
                psycopg.connect(ADMIN_URL, autocommit=True) as c,
            ):
                c.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        if config.out is not None:
            config.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _release_name(value: str | Path | FabricRelease) -> str:
    return str(value.bin_dir.parent) if isinstance(value, FabricRelease) else str(value)
