"""The real stack for one cell of the chain crash-point matrix, and what every cell checks.

Processes (tests/support/processes.py): `saga relay`, `saga watcher`, and `saga
worker --pool solo` processes: a solo worker is a single process, so a failpoint's
`kill` (SIGKILL of the process itself) takes down the whole worker the way a lost
machine does; its unacked message goes back to the queue when the broker sees the
connection drop. While a cell waits, dead workers are restarted, as a supervisor
(systemd, Kubernetes) would restart them, with the same environment: the
failpoints are armed `once*`, so the replacement goes through the point.

Ledger (conftest.py): the module's devnet with the real sagafacts chaincode
(tests/support/ledger.py), or the package's real Fabric 2.5 network
(tests/support/fabricnet.py); the stack sees either through `ChainLedger`. The
ledger outlives the cells, so it holds earlier cells' transactions; every count
here is per saga (by idempotency key) and the audit is limited with `since` to the
cell's own sagas and transactions.

What a cell ends with (`ChainStack.verify`):
- every saga terminal, with its expected status and exactly its business rows
  (tests/fault/checks.py: no local step or compensation took effect twice);
- on the ledger, per saga: VALID transactions creating the chain step's `do` key
  and its `undo` key, exactly the expected numbers (1/0 completed, 1/1
  compensated after the ledger step, 0/0 for a step that never committed);
- every recorded attempt of a completed step COMMITTED, and the one with code
  VALID is the txid on the ledger;
- `saga.app.audit.audit` clean (all five counts zero); on real Fabric also the operator's
  `saga audit --since ... --json` command, over the real blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient
from saga.adapters.fabric.ledger_scan import LedgerScan, scan_ledger
from saga.adapters.sql import SqlUnitOfWorkFactory
from saga.adapters.sql.tables import ledger_attempts
from saga.app.audit import AuditReport, audit
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from saga.core.definitions import chain_key
from saga.examples.order_payment import NAME
from saga.failpoints import MARKERS_ENV, hits
from saga.ports.ledger import VALID
from saga.registry_loader import load_registry
from saga_fabricnet import FabricNetwork
from tests.fault.chain.sagas import LEDGER_STEP
from tests.fault.checks import (
    DECLINED,
    PAID,
    REJECTED,
    check_sagas,
    open_count,
    payment,
    stuck_report,
)
from tests.support.devnet import Devnet
from tests.support.fabricnet import RealLedgerNet
from tests.support.ledger import LedgerNet
from tests.support.processes import ROOT, Processes, SagaProcess, saga_env
from tests.support.waiting import wait_for

DEFINITIONS = "tests.fault.chain.sagas"
# Room left in a 64-character order id for "-<index>".
ORDER_TAG_MAX = 56
# How long the `saga audit` command may take over the real network's blocks.
AUDIT_CLI_TIMEOUT = 120.0
# Chain steps one `saga chain-executor` of a cell runs at once: several, so a kill
# takes down steps in progress beside the one at the failpoint.
CHAIN_IN_FLIGHT = 8
# Where each cell appends its one-line result (JSON), when set.
RESULTS_ENV = "SAGA_CHAIN_MATRIX_RESULTS"


@dataclass(frozen=True)
class Expect:
    """What one saga must end as: status, business rows, VALID do / undo transactions."""

    status: str
    effects: tuple[str, ...]
    do_valid: int
    undo_valid: int


COMPLETED = Expect("completed", tuple(PAID), 1, 0)
# reject_order fails the pivot after the ledger step: the payment is reversed on
# the ledger, then voided and released locally.
REVERSED = Expect("compensated", tuple(REJECTED), 1, 1)
# The ledger step never took effect: nothing to reverse on the ledger.
NEVER_ON_LEDGER = Expect("compensated", tuple(REJECTED), 0, 0)
# decline_payment fails the step before the ledger step: compensated without ever
# reaching the ledger.
DECLINED_BEFORE_LEDGER = Expect("compensated", tuple(DECLINED), 0, 0)


def expect_for(simulate: str) -> Expect:
    if simulate == "decline_payment":
        return DECLINED_BEFORE_LEDGER
    return REVERSED if simulate == "reject_order" else COMPLETED


@dataclass
class CellResult:
    cell: str
    sagas: int
    statuses: dict[str, int]
    do_valid: int
    undo_valid: int
    attempts: dict[str, int]
    invalid_attempts: int
    failpoint_hits: list[str]
    worker_restarts: int
    seconds: float
    audit: dict[str, int | None]
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"CELL {self.cell}: {self.sagas} sagas {self.statuses}; VALID do={self.do_valid} "
            f"undo={self.undo_valid}; attempts {self.attempts} (invalid {self.invalid_attempts}); "
            f"failpoints fired {self.failpoint_hits or '-'}; worker restarts "
            f"{self.worker_restarts}; audit {self.audit}; {self.seconds:.1f}s"
            + (f"; {self.extra}" if self.extra else "")
        )


class ChainLedger(Protocol):
    """What the stack needs of a ledger: LedgerNet (devnet) and RealLedgerNet have it."""

    @property
    def channel(self) -> str: ...

    def profile(self, org: int = 1) -> Path: ...

    def msp_dir(self, org: int = 1) -> Path: ...

    def gateway(self, org: int = 1) -> GatewayClient: ...


def ledger_name(net: ChainLedger) -> str:
    return "fabric" if isinstance(net, RealLedgerNet) else "devnet"


def stack_settings(base: Settings, net: ChainLedger, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "definitions": DEFINITIONS,
        "relay_poll_interval": 0.05,
        "worker_prefetch": 1,
        "log_format": "json",
        "fabric_profile": str(net.profile(1)),
        "fabric_msp_dir": str(net.msp_dir(1)),
        "fabric_channel": net.channel,
        "fabric_status_timeout": 1.0,
        "fabric_endorse_timeout": 10.0,
        "fabric_submit_timeout": 10.0,
        "chain_recheck_delay": 2.0,
    }
    values.update(overrides)
    return replace(base, **values)


class ChainStack:
    def __init__(
        self,
        cell: str,
        settings: Settings,
        net: ChainLedger,
        engine: Engine,
        procs: Processes,
        markers: Path,
    ) -> None:
        self.cell = cell
        self.settings = settings
        self.net = net
        self.engine = engine
        self.procs = procs
        self.markers = markers
        self.registry = load_registry(settings.definitions)
        self.orch = Orchestrator(self.registry, SqlUnitOfWorkFactory(engine))
        # Proposal timestamps come from this machine's clock: a small margin keeps
        # this cell's own first transaction inside the audit window.
        self.since = datetime.now(UTC) - timedelta(seconds=1)
        self.started = time.monotonic()
        self.workers: list[SagaProcess] = []
        self._worker_specs: dict[int, tuple[list[str], dict[str, str]]] = {}
        self.restarts = 0
        self._local_worker = False
        # Every `saga chain-executor` process of the cell, restarted ones included.
        self.executor_pids: list[int] = []
        self.services: list[SagaProcess] = []
        self.orch_ids: list[str] = []

    # -- the ledger -----------------------------------------------------------------

    @property
    def ledger(self) -> str:
        """ "devnet" or "fabric"."""
        return ledger_name(self.net)

    @property
    def devnet(self) -> Devnet:
        """The devnet, for its fault knobs (devnet-only cells)."""
        assert isinstance(self.net, LedgerNet), f"cell {self.cell} needs the devnet"
        return self.net.devnet

    @property
    def fabric(self) -> FabricNetwork:
        """The real network, to kill and start its members (real-Fabric cells)."""
        assert isinstance(self.net, RealLedgerNet), f"cell {self.cell} needs real Fabric"
        return self.net.network

    # -- processes ------------------------------------------------------------------

    def relay(self) -> SagaProcess:
        relay = self.procs.relay(self.settings)
        self.services.append(relay)
        return relay

    def watcher(self, *args: str, failpoints: str = "") -> SagaProcess:
        """`saga watcher`; with failpoints armed it is supervised as the workers are
        (restarted when it dies), not a service whose death fails the cell."""
        argv = [
            "saga",
            "watcher",
            "--poll-interval",
            "0.2",
            "--wait-timeout",
            "5",
            "--redrive-interval",
            "5",
            "--status-interval",
            "1",
            *args,
        ]
        if failpoints:
            env = {MARKERS_ENV: str(self.markers), "SAGA_FAILPOINTS": failpoints}
            supervised = self.procs.spawn("watcher", argv, self.settings, **env)
            self._track(supervised, argv, env)
            return supervised
        watcher = self.procs.spawn("watcher", argv, self.settings)
        self.services.append(watcher)
        return watcher

    def worker(
        self, *, failpoints: str = "", hostname: str | None = None, **env: str
    ) -> SagaProcess:
        """A process that runs the chain steps, with the failpoints armed: a solo `saga
        worker`, or with a chain queue a `saga chain-executor` (several steps at once,
        on threads; its first call also starts the one plain worker for local steps)."""
        if self.settings.chain_queue:
            if not self._local_worker:
                self._local_worker = True
                self._spawn_worker(["saga", "worker", "--pool", "solo", "--concurrency", "1"], {})
            argv = ["saga", "chain-executor", "--in-flight", str(CHAIN_IN_FLIGHT)]
        else:
            argv = ["saga", "worker", "--pool", "solo", "--concurrency", "1"]
        if hostname:
            argv += ["--hostname", hostname]
        full_env = dict(env)
        if failpoints:
            full_env["SAGA_FAILPOINTS"] = failpoints
        return self._spawn_worker(argv, full_env)

    def _spawn_worker(self, argv: list[str], env: dict[str, str]) -> SagaProcess:
        full_env = {MARKERS_ENV: str(self.markers), **env}
        worker = self.procs.spawn("worker", argv, self.settings, **full_env)
        self._track(worker, argv, full_env)
        return worker

    def _track(self, worker: SagaProcess, argv: list[str], env: dict[str, str]) -> None:
        self.workers.append(worker)
        self._worker_specs[id(worker)] = (argv, env)
        if "chain-executor" in argv and worker.popen is not None:
            self.executor_pids.append(worker.popen.pid)

    def supervise(self) -> None:
        """Restart any worker that died (a supervisor's job), with its environment."""
        for worker in list(self.workers):
            if worker.alive():
                continue
            argv, env = self._worker_specs.pop(id(worker))
            worker.kill()  # reap, close its log, kill anything left in its group
            self.workers.remove(worker)
            name = "watcher" if argv[1] == "watcher" else "worker"
            replacement = self.procs.spawn(name, argv, self.settings, **env)
            self._track(replacement, argv, env)
            self.restarts += 1

    # -- sagas ----------------------------------------------------------------------

    @property
    def order_tag(self) -> str:
        """The cell's name as an order id prefix: an order id has at most 64 characters,
        and a long cell id ("compensation_worker_killed[fabric-chain.before_...]") keeps
        its head and a digest of the whole, so two cells never share an order id."""
        if len(self.cell) <= ORDER_TAG_MAX:
            return self.cell
        digest = hashlib.sha256(self.cell.encode()).hexdigest()[:8]
        return f"{self.cell[: ORDER_TAG_MAX - 9]}~{digest}"

    def enqueue(
        self, scenarios: Sequence[str], *, saga: str = NAME, expect: Expect | None = None
    ) -> dict[str, Expect]:
        out: dict[str, Expect] = {}
        base = len(self.orch_ids)
        for i, simulate in enumerate(scenarios):
            saga_id = self.orch.enqueue(saga, payment(self.order_tag, base + i, simulate)).saga_id
            out[saga_id] = expect or expect_for(simulate)
            self.orch_ids.append(saga_id)
        return out

    def wait_terminal(self, ids: Sequence[str], *, timeout: float = 90.0) -> None:
        def done() -> bool:
            self.supervise()
            try:
                return open_count(self.engine, ids) == 0
            except Exception:  # database restarting
                return False

        wait_for(
            done,
            timeout=timeout,
            what=f"{len(ids)} sagas of cell {self.cell} to reach a terminal state",
            report=lambda: self.report(ids),
            interval=0.25,
            alive=self.services,
        )

    def report(self, ids: Sequence[str]) -> str:
        lines = [stuck_report(self.engine, ids)]
        try:
            lines.append("ledger attempts (saga step/purpose: txid state code worker):")
            with self.engine.connect() as c:
                for r in c.execute(
                    select(ledger_attempts)
                    .where(ledger_attempts.c.saga_id.in_(list(ids)))
                    .order_by(ledger_attempts.c.id)
                ):
                    lines.append(
                        f"  {r.saga_id[:8]} {r.step}/{r.purpose}: {r.txid[:12]} {r.state} "
                        f"{r.code} {r.worker}"
                    )
        except Exception as exc:
            lines.append(f"  (unreadable: {exc!r})")
        lines.append(f"failpoint hits: {hits(self.markers)}")
        lines.append(self.procs.report(lines=25))
        return "\n".join(lines)

    # -- checks ---------------------------------------------------------------------

    def attempts(self, ids: Iterable[str]) -> list[Any]:
        with self.engine.connect() as c:
            return list(
                c.execute(
                    select(ledger_attempts)
                    .where(ledger_attempts.c.saga_id.in_(list(ids)))
                    .order_by(ledger_attempts.c.id)
                )
            )

    def scan(self) -> LedgerScan:
        client: GatewayClient = self.net.gateway()
        try:
            return scan_ledger(client, self.net.channel)
        finally:
            client.close()

    def audit(self, scan: LedgerScan) -> AuditReport:
        return audit(SqlUnitOfWorkFactory(self.engine), self.registry, scan, since=self.since)

    def verify(
        self,
        expected: Mapping[str, Expect],
        *,
        timeout: float = 90.0,
        settle: bool = True,
        **extra: Any,
    ) -> CellResult:
        """Wait for every saga, then check rows, ledger and audit; print the cell's line."""
        ids = list(expected)
        self.wait_terminal(ids, timeout=timeout)
        check_sagas(self.engine, {s: (e.status, e.effects) for s, e in expected.items()})
        if settle:
            self._wait_settled(ids)
        scan = self.scan()
        by_key = scan.valid_by_key()
        problems: list[str] = []
        do_total = undo_total = 0
        rows = self.attempts(ids)
        for saga_id, want in expected.items():
            do = len(by_key.get(chain_key(saga_id, LEDGER_STEP, "do"), []))
            undo = len(by_key.get(chain_key(saga_id, LEDGER_STEP, "undo"), []))
            do_total += do
            undo_total += undo
            if (do, undo) != (want.do_valid, want.undo_valid):
                problems.append(
                    f"{saga_id}: VALID do/undo on the ledger {do}/{undo}, "
                    f"expected {want.do_valid}/{want.undo_valid}"
                )
            for purpose, n in (("do", want.do_valid), ("undo", want.undo_valid)):
                mine = [r for r in rows if r.saga_id == saga_id and r.purpose == purpose]
                valid = [r for r in mine if r.code == VALID]
                if len(valid) != n:
                    problems.append(f"{saga_id} {purpose}: {len(valid)} attempts VALID in the db")
                if n and not all(scan.is_valid(r.txid) for r in valid):
                    problems.append(f"{saga_id} {purpose}: db VALID txid not VALID on the ledger")
        if self.settings.chain_queue:
            # Every transaction was prepared by a chain executor, none by the plain worker.
            strays = {r.worker for r in rows} - {
                f"{socket.gethostname()}:{pid}" for pid in self.executor_pids
            }
            if strays:
                problems.append(f"attempts prepared outside the chain executor: {sorted(strays)}")
        report = self.audit(scan)
        if not report.clean:
            problems.append(f"audit not clean: {json.dumps(report.as_dict(), default=str)[:3000]}")
        if self.ledger == "fabric":
            problems += self.audit_cli()
        assert not problems, "\n".join(problems) + "\n" + self.report(ids)
        states = Counter(f"{r.purpose}:{r.state}" for r in rows)
        result = CellResult(
            cell=self.cell,
            sagas=len(ids),
            statuses=dict(Counter(e.status for e in expected.values())),
            do_valid=do_total,
            undo_valid=undo_total,
            attempts=dict(states),
            invalid_attempts=sum(1 for r in rows if r.code not in (None, VALID)),
            failpoint_hits=[str(h["point"]) for h in hits(self.markers)],
            worker_restarts=self.restarts,
            seconds=time.monotonic() - self.started,
            audit=report.counts(),
            extra=extra,
        )
        print("\n" + result.line())
        target = os.environ.get(RESULTS_ENV)
        if target:
            with open(target, "a") as f:
                f.write(json.dumps(result.__dict__) + "\n")
        return result

    def audit_cli(self) -> list[str]:
        """`saga audit --since <cell start> --json`, the operator's command, over the real
        blocks: exit 0 and clean, with this cell's sagas and chain steps counted."""
        since = self.since.isoformat()
        done = subprocess.run(
            [sys.executable, "-m", "saga", "audit", "--since", since, "--json"],
            cwd=ROOT,
            env=saga_env(self.settings),
            capture_output=True,
            text=True,
            timeout=AUDIT_CLI_TIMEOUT,
        )
        try:
            found = json.loads(done.stdout)
        except ValueError:
            found = None
        if done.returncode != 0 or not isinstance(found, dict) or found.get("clean") is not True:
            return [
                f"saga audit --since {since}: exit {done.returncode}\n{done.stdout[-3000:]}"
                f"\n{done.stderr[-2000:]}"
            ]
        if not found.get("sagas") or not found.get("chain_steps"):
            return [f"saga audit --since {since} saw none of the cell's sagas: {found}"]
        return []

    def _wait_settled(self, ids: Sequence[str], timeout: float = 30.0) -> None:
        """Every attempt of the cell's sagas COMMITTED (a stray copy still in flight
        would commit after the scan and escape it)."""

        def settled() -> bool:
            return all(r.state == "committed" for r in self.attempts(ids))

        wait_for(
            settled,
            timeout=timeout,
            what="every ledger attempt of the cell COMMITTED",
            report=lambda: self.report(ids),
            interval=0.25,
        )


__all__ = [
    "COMPLETED",
    "DECLINED_BEFORE_LEDGER",
    "DEFINITIONS",
    "NEVER_ON_LEDGER",
    "REVERSED",
    "CellResult",
    "ChainLedger",
    "ChainStack",
    "Expect",
    "expect_for",
    "ledger_name",
    "stack_settings",
]
