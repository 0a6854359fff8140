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

`--baseline naive` runs the same workload and faults with tests.chaos.naive_sagas
(a ledger step that endorses and submits a new transaction on every try) and
counts its duplicates the same way (VALID payment transactions per saga beyond one).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from kombu import Connection, Producer
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient, SigningIdentity, load_connection_profile
from saga.adapters.fabric.ledger_scan import LedgerScan, scan_ledger
from saga.adapters.rabbitmq import Topology
from saga.adapters.sql import create_engine
from saga.adapters.sql.tables import ledger_attempts, outbox, sagas
from saga.app.dlq import browse
from saga.client import SagaClient, SagaClientError
from saga.config import PREFIX, Settings
from saga.core.definitions import chain_key
from saga.entrypoints.processes import Child, LocalProcessSet, load_processes, local_env
from saga.entrypoints.processes import select as select_processes
from saga_fabricnet import FabricRelease
from tests.chaos.ledgers import (
    CHAOS_BATCH_TIMEOUT,
    FABRIC_MEMBER,
    LEDGERS,
    FabricLedger,
    fabric_release,
)
from tests.chaos.sagas import LEDGER, LEDGER_STEP, LOCAL
from tests.fault.checks import DECLINED, PAID, REJECTED, doubled_rows, views
from tests.fault.services import start_postgres, start_rabbitmq, stop_postgres, stop_rabbitmq
from tests.support.broker_messages import poison_cases
from tests.support.ports import free_port
from tests.support.postgres import ADMIN_URL
from tests.support.processes import ROOT
from tests.support.rabbitmq import AMQP_URL, delete_topology, queue_depth

TERMINAL = ("completed", "compensated", "failed")
SCENARIOS = ("none", "decline_payment", "reject_order", "flaky_notify")
# Scenario weights: most orders go through, a fair share compensates.
WEIGHTS = (55, 15, 15, 15)
POISON_CASES = ("not-json", "wrong-schema", "unknown-saga", "unknown-task", "no-headers")

FAULT_KINDS = (
    "worker_kill",
    "relay_kill",
    "watcher_kill",
    "rabbitmq_restart",
    "postgres_restart",
    "devnet_kill",
    "chaincode_restart",
    # Ledger outages of 15-25 s (the acceptance run): the chaincode server
    # (devnet or real network), and on a real network one org's peer (peer0.org2, the
    # other org's endorser; peer0.org1, the gateway of every product process) and the
    # Raft leader among three orderers.
    "chaincode_outage",
    "peer_outage",
    "gateway_peer_outage",
    "orderer_leader_outage",
)
OUTAGES = frozenset(
    {"chaincode_outage", "peer_outage", "gateway_peer_outage", "orderer_leader_outage"}
)
BOTH = frozenset(LEDGERS)
# Where each kind applies: the devnet has no orderers or peers of its own to stop
# (devnet_kill takes its whole Fabric double down), a real network has no devnet.
FAULT_LEDGERS: dict[str, frozenset[str]] = {kind: BOTH for kind in FAULT_KINDS} | {
    "devnet_kill": frozenset({"devnet"}),
    "peer_outage": frozenset({"fabric"}),
    "gateway_peer_outage": frozenset({"fabric"}),
    "orderer_leader_outage": frozenset({"fabric"}),
}
FULL_FAULTS: dict[str, int] = {
    "worker_kill": 6,
    "relay_kill": 3,
    "watcher_kill": 3,
    "rabbitmq_restart": 1,
    "postgres_restart": 1,
    "devnet_kill": 2,
    "chaincode_restart": 2,
}
FABRIC_FULL_FAULTS: dict[str, int] = {
    "worker_kill": 6,
    "relay_kill": 3,
    "watcher_kill": 3,
    "rabbitmq_restart": 1,
    "postgres_restart": 1,
    "chaincode_outage": 2,
    "peer_outage": 2,
    "gateway_peer_outage": 1,
    "orderer_leader_outage": 2,
}
# The CI run: every kind once, workers twice.
CI_FAULTS: dict[str, int] = {kind: 1 for kind in FAULT_KINDS if kind in FULL_FAULTS} | {
    "worker_kill": 2
}
# On real Fabric: the process kills and server restarts once, the three outages of
# the acceptance once each (the gateway peer's outage is in the full run).
FABRIC_CI_FAULTS: dict[str, int] = {
    kind: 1 for kind in FAULT_KINDS if kind in FABRIC_FULL_FAULTS
} | {"worker_kill": 2, "gateway_peer_outage": 0}
# Seconds a killed process or a stopped server stays down (seeded within).
DOWNTIME: dict[str, tuple[float, float]] = {
    "worker_kill": (0.5, 3.0),
    "relay_kill": (0.5, 3.0),
    "watcher_kill": (0.5, 3.0),
    "rabbitmq_restart": (2.0, 6.0),
    "postgres_restart": (2.0, 6.0),
    "devnet_kill": (1.0, 4.0),
    "chaincode_restart": (1.0, 4.0),
    "chaincode_outage": (15.0, 25.0),
    "peer_outage": (15.0, 25.0),
    "gateway_peer_outage": (15.0, 25.0),
    "orderer_leader_outage": (15.0, 25.0),
}
KILLED_PROCESS = {
    "worker_kill": "worker",
    "relay_kill": "relay",
    "watcher_kill": "watcher",
    "devnet_kill": "devnet",
    "chaincode_restart": "chaincode",
    "chaincode_outage": "chaincode",
}


def fault_presets(ledger: str) -> tuple[dict[str, int], dict[str, int]]:
    """(full run's fault counts, CI run's) for a ledger."""
    if ledger == "fabric":
        return dict(FABRIC_FULL_FAULTS), dict(FABRIC_CI_FAULTS)
    return dict(FULL_FAULTS), dict(CI_FAULTS)


@dataclass
class ChaosConfig:
    sagas: int = 2000
    seed: int | None = None
    baseline: str = "ours"  # or "naive"
    workers: int = 2
    concurrency: int = 2
    ledger_share: float = 0.6  # of sagas that run v2 (with the chain step)
    resend_share: float = 0.1  # of requests sent a second time with the same key
    window: int = 120  # sagas in flight at most
    poison: int = 3
    faults: dict[str, int] = field(default_factory=lambda: dict(FULL_FAULTS))
    ledger: str = "devnet"  # or "fabric": a real network (saga_fabricnet)
    # With ledger "fabric": a version under .fabric/, a release folder, or a release.
    fabric: str | Path | FabricRelease = "2.5.16"
    batch_timeout: float = CHAOS_BATCH_TIMEOUT  # the real network's BatchTimeout
    # Sagas held back for each planned ledger outage and sent when it starts (None: 0
    # on the devnet, as before; on Fabric min(window, 15 % of the sagas / outages)). Faults
    # fire one after another and a ledger outage lasts 15-25 s, so by the time a late
    # one starts the load may have run out and it would meet an idle system. Sent as
    # the fault starts, these sagas meet it. At most 15 % are held in all, so the
    # last fault's 85 % terminal stays reachable.
    hold_per_fault: int | None = None

    # Faults fire when this fraction of the sagas is terminal (uniform in between).
    fault_span: tuple[float, float] = (0.05, 0.85)
    quiescence_timeout: float = 600.0
    enqueue_timeout: float = 180.0  # per saga, across every retry of its request
    workdir: Path | None = None
    keep: bool = False  # keep the database and queues (for a look afterwards)
    out: Path | None = None
    say: Callable[[str], None] = field(default=print, repr=False)

    @property
    def definitions(self) -> str:
        return {"ours": "tests.chaos.sagas", "naive": "tests.chaos.naive_sagas"}[self.baseline]

    def held_per_fault(self) -> int:
        planned = sum(n for kind, n in self.faults.items() if kind in OUTAGES)
        if planned == 0:
            return 0
        most = int(self.sagas * 0.15) // planned
        wanted = self.hold_per_fault
        if wanted is None:
            wanted = min(self.window, most) if self.ledger == "fabric" else 0
        return max(0, min(wanted, most))

    def check(self) -> None:
        if self.ledger not in LEDGERS:
            raise ValueError(f"ledger must be one of {LEDGERS}, not {self.ledger!r}")
        wrong = [k for k, n in self.faults.items() if n and self.ledger not in FAULT_LEDGERS[k]]
        if wrong:
            raise ValueError(f"fault kinds {wrong} do not apply to the {self.ledger} ledger")


@dataclass(frozen=True)
class Planned:
    kind: str
    at: float  # fraction of sagas terminal
    delay: float  # then wait this long
    downtime: float
    target: int  # which worker (index among workers), for worker_kill


@dataclass(frozen=True)
class SagaPlan:
    index: int
    saga: str
    simulate: str
    resend: bool

    @property
    def key(self) -> str:
        return f"chaos-{self.index}"

    @property
    def expected_status(self) -> str:
        failing = ("decline_payment", "reject_order")
        return "compensated" if self.simulate in failing else "completed"

    def payload(self) -> dict[str, Any]:
        return {
            "order_id": f"chaos-{self.index}",
            "customer_id": f"customer-{self.index % 97}",
            "amount_cents": 1000 + self.index,
            "currency": "EUR",
            "simulate": self.simulate,
        }


def plan_workload(rng: random.Random, config: ChaosConfig) -> list[SagaPlan]:
    out = []
    for i in range(config.sagas):
        saga = LEDGER if rng.random() < config.ledger_share else LOCAL
        simulate = rng.choices(SCENARIOS, WEIGHTS)[0]
        out.append(SagaPlan(i, saga, simulate, rng.random() < config.resend_share))
    return out


def plan_faults(rng: random.Random, config: ChaosConfig) -> list[Planned]:
    low, high = config.fault_span
    planned = []
    for kind in FAULT_KINDS:
        for _ in range(config.faults.get(kind, 0)):
            planned.append(
                Planned(
                    kind=kind,
                    at=rng.uniform(low, high),
                    delay=rng.uniform(0.0, 3.0),
                    downtime=rng.uniform(*DOWNTIME[kind]),
                    target=rng.randrange(max(1, config.workers)),
                )
            )
    return sorted(planned, key=lambda p: p.at)


def plan_poison(rng: random.Random, config: ChaosConfig) -> dict[int, str]:
    """saga index at which to publish -> poison case."""
    if config.poison <= 0 or config.sagas == 0:
        return {}
    at = rng.sample(range(config.sagas), min(config.poison, config.sagas))
    return {i: POISON_CASES[n % len(POISON_CASES)] for n, i in enumerate(sorted(at))}


# -- the stack ----------------------------------------------------------------------


class Stack:
    """The process set, a supervisor thread restarting what dies, and kill helpers."""

    def __init__(self, config: ChaosConfig, workdir: Path, settings: Settings) -> None:
        self.config = config
        self.workdir = workdir
        self.settings = settings
        # With a real network the devnet and its chaincode process are left out (as
        # `saga up` does when SAGA_FABRIC_PROFILE names a network) and every product
        # process gets the network's profile and User1@org1's MSP instead.
        self.fabric: FabricLedger | None = None
        base = child_env(settings)
        if config.ledger == "fabric":
            self.fabric = FabricLedger.create(
                workdir / "fabricnet", fabric_release(config.fabric), config.batch_timeout
            )
            base.update(self.fabric.env())
        specs = select_processes(load_processes(), devnet=self.fabric is None, without=["flower"])
        self.env = local_env(workdir, specs, base=base)
        self.procs = LocalProcessSet(
            specs,
            workdir=workdir,
            env=self.env,
            scale={"worker": config.workers},
            say=lambda text: config.say(f"[stack] {text}"),
        )
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.planned_restarts = 0
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    def start(self) -> None:
        if self.fabric is not None:
            seconds = self.fabric.up()
            self.config.say(
                f"[stack] Fabric {self.fabric.version} network up in {seconds:.1f}s "
                f"({self.fabric.network.dir})"
            )
        self.procs.start()
        self._thread.start()

    def _supervise(self) -> None:
        while not self.stopping.wait(0.3):
            with self.lock:
                self.procs.restart_dead()

    def children(self, name: str) -> list[Child]:
        return [c for c in self.procs.children if c.spec.name == name]

    def kill(self, child: Child, downtime: float) -> None:
        """SIGKILL the child's process group; the supervisor starts it after `downtime`."""
        with self.lock:
            child.signal_group(signal.SIGKILL)
            if child.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=30)
            child.next_start = time.monotonic() + downtime
            self.planned_restarts += 1

    def unplanned_restarts(self) -> int:
        return sum(c.restarts for c in self.procs.children) - self.planned_restarts

    def stop(self) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.procs.stop()
        finally:
            if self.fabric is not None:
                self.fabric.down()

    def report(self, lines: int = 12) -> str:
        parts = []
        for row in self.procs.status():
            try:
                tail = Path(row["log"]).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = []
            parts.append(
                f"=== {row['process']} alive={row['alive']} restarts={row['restarts']}\n"
                + "\n".join(tail)
            )
        return "\n".join(parts)


def child_env(settings: Settings) -> dict[str, str]:
    """Every Settings field as SAGA_*, the repository on PYTHONPATH (the definitions
    live in tests/chaos), the devnet's SAGA_FABRIC_* left to
    saga.entrypoints.processes.local_env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({PREFIX + f.name.upper(): str(getattr(settings, f.name)) for f in fields(settings)})
    for name in ("SAGA_FABRIC_PROFILE", "SAGA_FABRIC_MSP_DIR", "SAGA_FABRIC_MSP_ID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# -- progress -----------------------------------------------------------------------


class Progress:
    """Saga counts by status, polled from the database (the last good answer is kept
    while PostgreSQL is down)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statuses: Counter[str] = Counter()
        self.read_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.poll()

    def poll(self) -> bool:
        try:
            with self.engine.connect() as c:
                rows = c.execute(select(sagas.c.status, func.count()).group_by(sagas.c.status))
                self.statuses = Counter({str(s): int(n) for s, n in rows})
            self.read_at = time.monotonic()
            return True
        except Exception:
            return False

    @property
    def terminal(self) -> int:
        return sum(self.statuses[s] for s in TERMINAL)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


# -- faults -------------------------------------------------------------------------


@dataclass
class FaultRecord:
    kind: str
    at_terminal: int
    started: float  # seconds since the run started
    seconds: float  # until the service was back (process: restarted by the supervisor)
    target: str
    error: str | None = None
    # Wall-clock (epoch) seconds the fault began and the service was given back; with
    # them the result tells how long the product took to complete sagas again.
    down_at: float = 0.0
    up_at: float = 0.0
    # Real network only: seconds from the member's restart until an orderer leads and
    # both orgs endorse again (the network's own recovery, for comparison).
    network_ready_after: float | None = None
    # Filled after the run (see `recovery`): seconds from up_at to the first saga
    # completed, and to the first chain step done, after it.
    first_completed_after: float | None = None
    first_chain_step_after: float | None = None
    chain_steps_while_down: int | None = None


class Injector:
    def __init__(
        self,
        plan: list[Planned],
        stack: Stack,
        progress: Progress,
        config: ChaosConfig,
        t0: float,
    ) -> None:
        self.plan = plan
        self.stack = stack
        self.progress = progress
        self.config = config
        self.t0 = t0
        self.done: list[FaultRecord] = []
        # Ledger outages planned and begun (the workload releases held sagas on each).
        self.outages = sum(1 for p in plan if p.kind in OUTAGES)
        self.outages_started = 0
        self.finished = threading.Event()
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def abort(self) -> None:
        self._abort.set()
        self._thread.join(timeout=300)

    def _run(self) -> None:
        try:
            for item in self.plan:
                threshold = item.at * self.config.sagas
                while self.progress.terminal < threshold:
                    if self._abort.wait(0.25):
                        return
                if self._abort.wait(item.delay):
                    return
                if item.kind in OUTAGES:
                    self.outages_started += 1
                self.done.append(self._inject(item))
        finally:
            self.finished.set()

    def _inject(self, item: Planned) -> FaultRecord:
        started = time.monotonic()
        record = FaultRecord(
            item.kind, self.progress.terminal, round(started - self.t0, 1), 0.0, ""
        )
        record.down_at = time.time()
        say = self.config.say
        fabric = self.stack.fabric
        try:
            if fabric is not None and item.kind in FABRIC_MEMBER:
                member = fabric.take_down(item.kind)
                record.target = member
                say(
                    f"[fault] {record.started:7.1f}s {item.kind}: {member} down "
                    f"for {item.downtime:.1f}s"
                )
                try:
                    time.sleep(item.downtime)
                finally:
                    fabric.bring_back(member)
                    record.up_at = time.time()
                try:
                    record.network_ready_after = round(fabric.ready_after(), 1)
                except Exception as exc:  # the network's own trouble, not the product's
                    record.error = f"network not ready again: {type(exc).__name__}: {exc}"
                say(f"[fault] {member} back; network ready after {record.network_ready_after}s")
            elif item.kind == "rabbitmq_restart":
                record.target = "rabbitmq-server"
                say(f"[fault] {record.started:7.1f}s stopping RabbitMQ for {item.downtime:.1f}s")
                try:
                    stop_rabbitmq()
                    time.sleep(item.downtime)
                finally:
                    start_rabbitmq()
            elif item.kind == "postgres_restart":
                record.target = "postgresql"
                say(f"[fault] {record.started:7.1f}s stopping PostgreSQL for {item.downtime:.1f}s")
                try:
                    stop_postgres()
                    time.sleep(item.downtime)
                finally:
                    start_postgres()
            else:
                name = KILLED_PROCESS[item.kind]
                candidates = self.stack.children(name)
                child = candidates[item.target % len(candidates)]
                record.target = child.label
                pid = child.popen.pid if child.popen else None
                say(
                    f"[fault] {record.started:7.1f}s SIGKILL {child.label} (pid {pid}), "
                    f"restart in {item.downtime:.1f}s"
                )
                self.stack.kill(child, item.downtime)
                deadline = time.monotonic() + item.downtime + 30
                while not child.alive() and time.monotonic() < deadline:
                    time.sleep(0.1)
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            say(f"[fault] {item.kind} FAILED: {record.error}")
        if not record.up_at:
            record.up_at = time.time()
        record.seconds = round(record.up_at - record.down_at, 1)
        return record


# -- workload -----------------------------------------------------------------------


@dataclass
class Accepted:
    plan: SagaPlan
    saga_id: str


@dataclass
class WorkloadResult:
    accepted: dict[str, Accepted] = field(default_factory=dict)  # saga id -> plan
    refused: list[str] = field(default_factory=list)  # keys never accepted
    requests: int = 0  # enqueue calls made (resends included)
    http_attempts: int = 0  # HTTP requests sent (client retries included)
    resends: int = 0
    resend_mismatch: list[str] = field(default_factory=list)
    retried_after_error: int = 0
    poison: list[bytes] = field(default_factory=list)
    seconds: float = 0.0


def run_workload(
    plans: list[SagaPlan],
    poison_at: Mapping[int, str],
    client: SagaClient,
    progress: Progress,
    settings: Settings,
    config: ChaosConfig,
    injector: Injector | None = None,
) -> WorkloadResult:
    result = WorkloadResult()
    started = time.monotonic()
    hold = config.held_per_fault() if injector is not None else 0
    for plan in plans:
        # Keep `hold` sagas back for each outage not started yet (see ChaosConfig).
        while (
            injector is not None
            and hold
            and plan.index >= len(plans) - hold * (injector.outages - injector.outages_started)
            and not injector.finished.wait(0.1)
        ):
            pass
        if plan.index in poison_at:
            result.poison.append(publish_poison(settings, poison_at[plan.index]))
        # Keep at most `window` sagas in flight: the load lasts as long as the run.
        # While the counts cannot be read (PostgreSQL down) requests go on, as a
        # service's would: the API refuses them and they are retried.
        while (
            len(result.accepted) - progress.terminal >= config.window
            and time.monotonic() - progress.read_at < 2.0
        ):
            time.sleep(0.1)
        saga_id = _enqueue(client, plan, result, config)
        if saga_id is None:
            result.refused.append(plan.key)
            continue
        result.accepted[saga_id] = Accepted(plan, saga_id)
        if plan.resend:
            result.resends += 1
            again = _enqueue(client, plan, result, config)
            if again != saga_id:
                result.resend_mismatch.append(f"{plan.key}: {saga_id} then {again}")
        if (plan.index + 1) % 250 == 0:
            config.say(
                f"[load] {plan.index + 1} accepted, {progress.terminal} terminal "
                f"({dict(progress.statuses)})"
            )
    result.http_attempts = client.attempts
    result.seconds = time.monotonic() - started
    return result


def _enqueue(
    client: SagaClient, plan: SagaPlan, result: WorkloadResult, config: ChaosConfig
) -> str | None:
    """The saga's id; the request is retried with the same key while the service is
    down (SagaClient retries a few times itself; this outlasts a server restart)."""
    deadline = time.monotonic() + config.enqueue_timeout
    while True:
        result.requests += 1
        try:
            return client.enqueue(plan.saga, plan.payload(), idempotency_key=plan.key)
        except SagaClientError as exc:
            if (exc.status or 503) < 500 or time.monotonic() > deadline:
                config.say(f"[load] {plan.key} refused: {exc}")
                return None
            result.retried_after_error += 1
            time.sleep(1.0)


def publish_poison(settings: Settings, case: str) -> bytes:
    """Publish one poison message onto the step queue (retried while RabbitMQ is down)."""
    args, _ = poison_cases(str(uuid.uuid4()))[case]
    topology = Topology.from_settings(settings)
    deadline = time.monotonic() + 120
    while True:
        try:
            with Connection(settings.broker_url, connect_timeout=5) as connection:
                topology.declare_kombu(connection)
                producer = Producer(connection.default_channel)
                producer.publish(
                    args["body"],
                    exchange=topology.kombu_step_exchange(),
                    routing_key=topology.step_routing_key,
                    headers=args["headers"],
                    content_type="application/json",
                    content_encoding="utf-8",
                )
            body: bytes = args["body"]
            return body
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


# -- quiescence ---------------------------------------------------------------------


@dataclass
class Quiet:
    reached: bool
    seconds: float
    open_sagas: int
    unpublished: int
    queue_depth: int
    unsettled_attempts: int


def quiet_now(engine: Engine, settings: Settings) -> Quiet:
    with engine.connect() as c:
        open_sagas = c.execute(
            select(func.count()).select_from(sagas).where(sagas.c.status.not_in(TERMINAL))
        ).scalar_one()
        pending = c.execute(
            select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        ).scalar_one()
        unsettled = c.execute(
            select(func.count())
            .select_from(ledger_attempts)
            .where(ledger_attempts.c.state != "committed")
        ).scalar_one()
    depth = queue_depth(settings.broker_url, settings.step_queue)
    done = open_sagas == 0 and pending == 0 and depth == 0 and unsettled == 0
    return Quiet(done, 0.0, int(open_sagas), int(pending), int(depth), int(unsettled))


def wait_quiet(engine: Engine, settings: Settings, config: ChaosConfig) -> Quiet:
    started = time.monotonic()
    deadline = started + config.quiescence_timeout
    last: Quiet | None = None
    said = 0.0
    while True:
        try:
            last = quiet_now(engine, settings)
        except Exception as exc:
            config.say(f"[quiet] not readable yet: {type(exc).__name__}")
        if last is not None and last.reached:
            break
        now = time.monotonic()
        if now > deadline:
            break
        if last is not None and now - said > 15:
            said = now
            config.say(
                f"[quiet] {now - started:5.0f}s: {last.open_sagas} sagas open, "
                f"{last.unpublished} outbox rows unpublished, {last.queue_depth} queued, "
                f"{last.unsettled_attempts} ledger attempts unsettled"
            )
        time.sleep(1.0)
    assert last is not None
    return replace(last, seconds=round(time.monotonic() - started, 1))


# -- checks -------------------------------------------------------------------------


def ledger_scan(env: Mapping[str, str], channel: str) -> LedgerScan:
    profile = load_connection_profile(env["SAGA_FABRIC_PROFILE"])
    identity = SigningIdentity.from_msp_dir(profile.msp_id, env["SAGA_FABRIC_MSP_DIR"])
    with GatewayClient.connect(profile.endpoint(), identity) as client:
        return scan_ledger(client, channel)


def ledger_counts_per_saga(
    scan: LedgerScan, ids: list[str], baseline: str
) -> dict[str, tuple[int, int]]:
    """saga id -> (VALID transactions creating its payment record, its reversal record)."""
    by_key = scan.valid_by_key()
    if baseline == "ours":
        return {
            sid: (
                len(by_key.get(chain_key(sid, LEDGER_STEP, "do"), [])),
                len(by_key.get(chain_key(sid, LEDGER_STEP, "undo"), [])),
            )
            for sid in ids
        }
    counts: dict[str, list[int]] = {sid: [0, 0] for sid in ids}
    for key, txs in by_key.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "naive" and parts[1] in counts:
            counts[parts[1]][0 if parts[2] == "do" else 1] += len(txs)
    return {sid: (do, undo) for sid, (do, undo) in counts.items()}


def run_audit(env: Mapping[str, str], workdir: Path) -> tuple[int, dict[str, Any]]:
    """`saga audit --json`, the operator's command, on the run's database and ledger."""
    proc = subprocess.run(
        [sys.executable, "-m", "saga", "audit", "--json"],
        env=dict(env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        data = {"stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:]}
    return proc.returncode, data


def recovery(engine: Engine, faults: list[FaultRecord]) -> None:
    """Per fault, from the database: seconds from the service's return to the first
    ledger saga completed and to the first chain step done (a local saga completes
    whatever the ledger does, so it says nothing about recovery), and how many chain
    steps were done while it was down (an orderer leader's stop does not stop the
    ledger: the other two elect a new leader)."""
    first_completed = text(
        "SELECT min(updated_at) FROM sagas WHERE status = 'completed' AND name = :name "
        "AND updated_at >= :t"
    )
    first_step = text(
        "SELECT min(at) FROM saga_history WHERE kind = 'step succeeded' "
        "AND detail->>'step' = :step AND at >= :t"
    )
    during = text(
        "SELECT count(*) FROM saga_history WHERE kind = 'step succeeded' "
        "AND detail->>'step' = :step AND at >= :a AND at < :b"
    )
    with engine.connect() as c:
        for f in faults:
            up = datetime.fromtimestamp(f.up_at, UTC)
            done = c.execute(first_completed, {"name": LEDGER, "t": up}).scalar_one()
            step = c.execute(first_step, {"step": LEDGER_STEP, "t": up}).scalar_one()
            f.first_completed_after = _seconds_since(done, f.up_at)
            f.first_chain_step_after = _seconds_since(step, f.up_at)
            f.chain_steps_while_down = int(
                c.execute(
                    during,
                    {"step": LEDGER_STEP, "a": datetime.fromtimestamp(f.down_at, UTC), "b": up},
                ).scalar_one()
            )


def _seconds_since(at: datetime | None, epoch: float) -> float | None:
    return None if at is None else round(at.timestamp() - epoch, 1)


def ledger_waits(engine: Engine, ids: list[str]) -> dict[str, Any]:
    """How the sagas met the outages: how many waited for the ledger (history
    "waiting for the ledger": one note per wait, so a saga can have several), and how
    many tries of the chain step failed (an outage must not spend them: guarantee 7)."""
    waits = text(
        "SELECT saga_id, count(*) FROM saga_history WHERE kind = 'waiting for the ledger' "
        "GROUP BY saga_id"
    )
    failed = text(
        "SELECT saga_id, count(*) FROM saga_history WHERE kind IN ('step failed', "
        "'compensation failed') AND detail->>'step' = :step GROUP BY saga_id"
    )
    wanted = set(ids)
    with engine.connect() as c:
        waited = {str(r[0]): int(r[1]) for r in c.execute(waits) if str(r[0]) in wanted}
        tries = {
            str(r[0]): int(r[1])
            for r in c.execute(failed, {"step": LEDGER_STEP})
            if str(r[0]) in wanted
        }
    return {
        "sagas_waited": len(waited),
        "waits": sum(waited.values()),
        "chain_step_tries_failed": sum(tries.values()),
        "sagas_with_failed_chain_tries": sorted(tries)[:20],
    }


def check(
    engine: Engine,
    workload: WorkloadResult,
    scan: LedgerScan,
    settings: Settings,
    baseline: str,
) -> dict[str, Any]:
    """Every invariant, as counts (each must be 0) and up to 20 examples of each."""
    accepted = workload.accepted
    ids = list(accepted)
    got = views(engine, ids)
    problems: dict[str, list[str]] = {
        k: []
        for k in (
            "lost",
            "stuck",
            "unexpected_outcome",
            "not_completed_without_business_failure",
            "effects_wrong",
            "doubled_local_writes",
            "step_succeeded_twice",
            "compensation_unmatched",
            "ledger_duplicates",
            "ledger_missing",
            "ledger_unexpected",
            "duplicate_sagas",
            "dlq_unexpected",
            "dlq_missing_poison",
            "refused_requests",
        )
    }
    outcomes: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    v2 = [sid for sid, a in accepted.items() if a.plan.saga == LEDGER]
    ledger = ledger_counts_per_saga(scan, v2, baseline)
    ledger_valid = {"do": 0, "undo": 0}
    for sid, acc in accepted.items():
        v = got.get(sid)
        if v is None:
            problems["lost"].append(f"{sid} ({acc.plan.key})")
            outcomes["lost"] += 1
            continue
        outcomes[v.status] += 1
        kind = "ledger" if acc.plan.saga == LEDGER else "local"
        by_kind[f"{kind}/{acc.plan.simulate}/{v.status}"] += 1
        if v.status not in TERMINAL:
            problems["stuck"].append(v.line())
            continue
        if v.status != acc.plan.expected_status:
            problems["unexpected_outcome"].append(
                f"{acc.plan.simulate} expected {acc.plan.expected_status}: {v.line()}"
            )
            if acc.plan.expected_status == "completed":
                # No business failure was simulated: an outage (or a fault) ended it.
                problems["not_completed_without_business_failure"].append(v.line())
        allowed = {"completed": [PAID], "compensated": [DECLINED, REJECTED]}.get(v.status)
        if allowed is not None and v.effects not in allowed:
            problems["effects_wrong"].append(v.line())
        effects = Counter(v.effects)
        if v.status == "compensated" and (
            effects["release"] != effects["reserve"] or effects["void"] != effects["payment"]
        ):
            problems["compensation_unmatched"].append(f"local: {v.line()}")
        done = Counter(step for k, step in v.history if k == "step succeeded")
        undone = Counter(step for k, step in v.history if k == "compensation succeeded")
        twice = [s for s, n in done.items() if n > 1] + [s for s, n in undone.items() if n > 1]
        if twice:
            problems["step_succeeded_twice"].append(f"{sid}: {twice}")
        if sid in ledger:
            do, undo = ledger[sid]
            ledger_valid["do"] += do
            ledger_valid["undo"] += undo
            if do > 1 or undo > 1:
                problems["ledger_duplicates"].append(
                    f"{sid}: {do} VALID payments, {undo} reversals"
                )
            if v.status == "completed" and do == 0:
                problems["ledger_missing"].append(f"{sid} completed with no VALID payment")
            if v.status == "completed" and undo:
                problems["ledger_unexpected"].append(f"{sid} completed with a reversal")
            if v.status == "compensated" and undo != do:
                problems["compensation_unmatched"].append(
                    f"ledger: {sid} compensated with {do} VALID payment(s), {undo} reversal(s)"
                )
            if "payment" not in v.effects and do:
                problems["ledger_unexpected"].append(f"{sid}: VALID payment, no local payment")
    for saga_id, action, n in doubled_rows(engine):
        problems["doubled_local_writes"].append(f"{saga_id} {action} x{n}")
    with engine.connect() as c:
        in_db = int(c.execute(select(func.count()).select_from(sagas)).scalar_one())
    if in_db != len(accepted):
        problems["duplicate_sagas"].append(
            f"{in_db} sagas in the database, {len(accepted)} accepted"
        )
    problems["duplicate_sagas"] += workload.resend_mismatch
    problems["refused_requests"] += workload.refused
    dead = browse(settings)
    poison = list(workload.poison)
    for message in dead:
        if message.body in poison:
            poison.remove(message.body)
        else:
            problems["dlq_unexpected"].append(f"{message.message_id}: {message.reason}")
    problems["dlq_missing_poison"] += [repr(p[:60]) for p in poison]
    duplicates = sum(max(0, d - 1) + max(0, u - 1) for d, u in ledger.values())
    unreversed = sum(
        max(0, d - u)
        for sid, (d, u) in ledger.items()
        if got.get(sid) is not None and got[sid].status == "compensated"
    )
    return {
        "outcomes": dict(outcomes),
        "by_kind": dict(sorted(by_kind.items())),
        "ledger_sagas": len(v2),
        "ledger_valid": ledger_valid,
        "ledger_duplicate_transactions": duplicates,
        "unreversed_payments": unreversed,
        "dlq": {"messages": len(dead), "poison_injected": len(workload.poison)},
        "counts": {k: len(v) for k, v in problems.items()},
        "examples": {k: v[:20] for k, v in problems.items() if v},
    }


# -- the run ------------------------------------------------------------------------


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
    settings = Settings(
        database_url=f"{base}/{db_name}",
        broker_url=AMQP_URL,
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
    with psycopg.connect(ADMIN_URL, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db_name}"')
    engine = create_engine(settings)
    stack = Stack(config, workdir, settings)
    progress = Progress(engine)
    result: dict[str, Any] = {
        "seed": seed,
        "baseline": config.baseline,
        "ledger_kind": config.ledger,
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
        injector = Injector(fault_plan, stack, progress, config, t0)
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
        with contextlib.suppress(Exception):
            # A server left down by an interrupted fault comes back before anything else.
            start_rabbitmq()
            start_postgres()
        stack.stop()
        engine.dispose()
        if not config.keep:
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


def invariants(result: Mapping[str, Any], config: ChaosConfig) -> dict[str, int]:
    """The counts that must all be 0 (the run exits non-zero otherwise)."""
    counts = dict(result["counts"])
    quiet = result["quiescence"]
    counts["not_quiescent"] = 0 if quiet["reached"] else 1
    counts["audit_not_clean"] = 0 if result["audit"]["exit_code"] == 0 else 1
    missing = [
        kind for kind, n in config.faults.items() if n and result["faults_by_kind"].get(kind, 0) < n
    ]
    counts["faults_not_injected"] = len(missing) + len(result["fault_errors"])
    return counts


# -- the table ----------------------------------------------------------------------


def table(results: list[Mapping[str, Any]]) -> str:
    """The summary table; two results (ours, naive) side by side."""
    names = [_column(r) for r in results]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, get: Callable[[Mapping[str, Any]], Any]) -> None:
        values = []
        for r in results:
            try:
                value = get(r)
            except (KeyError, TypeError):
                value = "-"
            values.append("-" if value is None else str(value))
        rows.append((label, values))

    row("seed", lambda r: r["seed"])
    row("sagas accepted", lambda r: r["sagas_accepted"])
    for status in ("completed", "compensated", "failed"):
        row(f"  {status}", _lookup("outcomes", status))
    row(
        "  ledger (v2) / local (v1)",
        lambda r: _pair(r["ledger_sagas"], r["sagas_accepted"] - r["ledger_sagas"]),
    )
    row(
        "requests: sent twice / retried",
        lambda r: _pair(
            r["requests"]["sent_twice_on_purpose"],
            r["requests"]["http_requests"]
            - r["requests"]["enqueue_calls"]
            + r["requests"]["retried_after_server_error"],
        ),
    )
    for kind in FAULT_KINDS:
        if any(r.get("faults_by_kind", {}).get(kind) for r in results):
            row(f"fault {kind}", _lookup("faults_by_kind", kind))
    row("unplanned process restarts", lambda r: r["unplanned_restarts"])
    row(
        "poison injected / in DLQ",
        lambda r: _pair(r["dlq"]["poison_injected"], r["dlq"]["messages"]),
    )
    row("lost", lambda r: r["counts"]["lost"])
    row("stuck (not terminal)", lambda r: r["counts"]["stuck"])
    row("unexpected outcome", lambda r: r["counts"]["unexpected_outcome"])
    row(
        "  not completed, no business failure",
        lambda r: r["counts"].get("not_completed_without_business_failure", 0),
    )
    row(
        "sagas that waited for the ledger",
        lambda r: _pair(r["ledger_waits"]["sagas_waited"], r["ledger_waits"]["waits"]) + " waits",
    )
    row("chain step tries failed", lambda r: r["ledger_waits"]["chain_step_tries_failed"])
    row(
        "VALID payments / reversals",
        lambda r: _pair(r["ledger_valid"]["do"], r["ledger_valid"]["undo"]),
    )
    row("DUPLICATE ledger transactions", lambda r: r["ledger_duplicate_transactions"])
    row("payments never reversed", lambda r: r["unreversed_payments"])
    row("doubled local writes", lambda r: r["counts"]["doubled_local_writes"])
    row("compensation unmatched", lambda r: r["counts"]["compensation_unmatched"])
    row("duplicate sagas", lambda r: r["counts"]["duplicate_sagas"])
    row("DLQ unexpected", lambda r: r["counts"]["dlq_unexpected"])
    row("audit (exit code)", lambda r: r["audit"]["exit_code"])
    row("time to quiescence (s)", lambda r: r["seconds"]["to_quiescence_after_last_fault"])
    row("total time (s)", lambda r: r["seconds"]["total"])
    row("invariants", lambda r: "PASS" if r.get("ok") else "FAIL")
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(len(n), *(len(v[i]) for _, v in rows)) + 2 for i, n in enumerate(names)]
    lines = ["".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, cols, strict=True))]
    lines += [
        label.ljust(width) + "".join(v.rjust(c) for v, c in zip(values, cols, strict=True))
        for label, values in rows
    ]
    return "\n".join(lines)


def _column(result: Mapping[str, Any]) -> str:
    ledger = str(result.get("ledger_kind", "devnet"))
    if result.get("fabric_version"):
        ledger = f"fabric {result['fabric_version']}"
    return f"{result.get('baseline', '?')} / {ledger}"


def recovery_table(results: list[Mapping[str, Any]]) -> str:
    """One line per fault: when, what, how long down, and how soon the product
    completed sagas again (seconds after the service came back)."""
    lines = []
    for r in results:
        lines.append(f"{_column(r)} (seed {r.get('seed')}):")
        lines.append(
            "  at (s)  fault                  target                 down (s)  "
            "net ready  1st ledger saga  1st chain step  chain steps while down"
        )
        for f in r.get("faults", []):

            def cell(v: object) -> str:
                return "-" if v is None else str(v)

            lines.append(
                f"  {f['started']:6.1f}  {f['kind']:<22} {f['target'][:22]:<22} "
                f"{f['seconds']:8.1f}  {cell(f.get('network_ready_after')):>9}  "
                f"{cell(f.get('first_completed_after')):>15}  "
                f"{cell(f.get('first_chain_step_after')):>14}  "
                f"{cell(f.get('chain_steps_while_down')):>22}"
                + (f"  ERROR {f['error']}" if f.get("error") else "")
            )
    return "\n".join(lines)


def _lookup(section: str, key: str) -> Callable[[Mapping[str, Any]], Any]:
    def get(result: Mapping[str, Any]) -> Any:
        return result[section].get(key, 0)

    return get


def _pair(a: object, b: object) -> str:
    return f"{a} / {b}"


def failures(result: Mapping[str, Any]) -> str:
    bad = {k: v for k, v in result.get("invariants", {}).items() if v}
    lines = [f"invariants failed: {bad}"] if bad else []
    for kind, examples in result.get("examples", {}).items():
        lines.append(f"{kind}:")
        lines += [f"  {e}" for e in examples[:5]]
    if result.get("fault_errors"):
        lines.append(f"fault errors: {result['fault_errors']}")
    if result.get("audit", {}).get("exit_code"):
        lines.append(f"audit: {result['audit']}")
    return "\n".join(lines)
