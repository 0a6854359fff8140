"""`saga demo`: the order-payment example end to end, relay and workers included.

It enqueues a mix of sagas (most complete; some are declined or rejected and
compensate; some have a flaky notification that is retried forward), runs the
relay in a thread and workers as child processes (`saga worker`, the same command
operators run), and waits until every saga is terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from saga.bootstrap import Container
from saga.config import PREFIX, Settings
from saga.core.state import SagaStatus
from saga.entrypoints.demo_ledger import check_ledger, fabric_network_settings, local_ledger
from saga.examples.order_payment import NAME

if TYPE_CHECKING:
    from saga.app.audit import AuditReport

# One in twenty of each failure kind; the rest are plain payments.
_SCENARIOS = ("decline_payment", "reject_order", "flaky_notify")


def scenario(i: int) -> str:
    return _SCENARIOS[i % 20] if i % 20 < len(_SCENARIOS) else "none"


@dataclass
class DemoSummary:
    total: int
    completed: int
    compensated: int
    failed: int
    unfinished: int
    seconds: float
    expected_completed: int
    expected_compensated: int
    # With a ledger: the audit of this run (database against ledger).
    audit: AuditReport | None = None

    @property
    def rate(self) -> float:
        return (self.total - self.unfinished) / self.seconds if self.seconds else 0.0

    @property
    def problem(self) -> str | None:
        if self.audit is not None and not self.audit.clean:
            return f"the audit found discrepancies: {self.audit.counts()} (run `saga audit`)"
        if self.unfinished:
            return f"{self.unfinished} sagas did not finish in time"
        if self.failed:
            return f"{self.failed} sagas failed (see `saga list --status failed`)"
        if (self.completed, self.compensated) != (
            self.expected_completed,
            self.expected_compensated,
        ):
            return (
                f"expected {self.expected_completed} completed and "
                f"{self.expected_compensated} compensated"
            )
        return None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in settings.redacted().items():
        env[key] = str(value)
    # redacted() masks secrets; the child needs the real ones.
    env[PREFIX + "DATABASE_URL"] = settings.database_url
    env[PREFIX + "BROKER_URL"] = settings.broker_url
    env[PREFIX + "API_TOKEN"] = settings.api_token
    env[PREFIX + "FABRIC_TLS_CERT"] = settings.fabric_tls_cert
    env[PREFIX + "FABRIC_TLS_KEY"] = settings.fabric_tls_key
    return env


def run_demo(
    settings: Settings,
    *,
    sagas: int,
    timeout: float,
    console: Console,
    ledger: bool = False,
    ledger_dir: Path = Path(".saga-demo"),
    fabric_dir: Path | None = None,
) -> DemoSummary:
    """Run the demo; with `ledger`, the v2 saga records each payment on a ledger.

    The ledger is, in this order: the launcher's network in `fabric_dir` (`python -m
    saga_fabricnet up --dir DIR`, already running), the one SAGA_FABRIC_* names, or
    else a devnet and the sagafacts chaincode started here (state kept in
    `ledger_dir`). A network that runs already is asked once before anything starts
    (DemoLedgerError if it does not answer). A watcher follows the commits.
    """
    with ExitStack() as stack:
        if ledger:
            settings = replace(settings, definitions="saga.examples.order_payment_ledger")
            if fabric_dir is not None:
                settings = fabric_network_settings(settings, fabric_dir)
            if settings.ledger_configured:
                console.print(f"using {check_ledger(settings)}", soft_wrap=True)
            else:
                console.print(f"starting a devnet and the sagafacts chaincode in {ledger_dir}…")
                fabric = stack.enter_context(local_ledger(ledger_dir))
                settings = replace(
                    settings,
                    fabric_profile=fabric["fabric_profile"],
                    fabric_msp_dir=fabric["fabric_msp_dir"],
                )
        return _run(settings, sagas=sagas, timeout=timeout, console=console, ledger=ledger)


def _run(
    settings: Settings, *, sagas: int, timeout: float, console: Console, ledger: bool
) -> DemoSummary:
    container = Container(settings)
    console.print("migrating the schema…")
    container.migrate()
    orchestrator = container.orchestrator()

    stop = threading.Event()
    relay = threading.Thread(target=container.run_relay, args=(stop,), name="relay", daemon=True)
    commands = [["worker", "--pool", "prefork"]] + ([["watcher"]] if ledger else [])
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "saga", *command],
            env=_worker_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for command in commands
    ]
    run = uuid.uuid4().hex[:8]
    ids: list[str] = []
    expected = Counter[str]()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    started = time.monotonic()
    since = datetime.now(UTC)
    try:
        relay.start()
        with progress:
            enq = progress.add_task("enqueue", total=sagas)
            for i in range(sagas):
                kind = scenario(i)
                expected[
                    "compensated" if kind in ("decline_payment", "reject_order") else "completed"
                ] += 1
                result = orchestrator.enqueue(
                    NAME,
                    {
                        "order_id": f"demo-{run}-{i}",
                        "customer_id": f"customer-{i % 17}",
                        "amount_cents": 1000 + i,
                        "currency": "EUR",
                        "simulate": kind,
                    },
                    idempotency_key=f"demo-{run}-{i}",
                )
                ids.append(result.saga_id)
                progress.advance(enq)
            done = progress.add_task("finish", total=sagas)
            statuses = _wait(
                container, ids, timeout, started, lambda n: progress.update(done, completed=n)
            )
    finally:
        stop.set()
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        relay.join(timeout=10)
    seconds = time.monotonic() - started
    counts = Counter(statuses.values())
    audit = _audit(container, since) if ledger else None
    return DemoSummary(
        audit=audit,
        total=sagas,
        completed=counts[SagaStatus.COMPLETED],
        compensated=counts[SagaStatus.COMPENSATED],
        failed=counts[SagaStatus.FAILED],
        unfinished=sagas - sum(counts[s] for s in SagaStatus if s.terminal),
        seconds=seconds,
        expected_completed=expected["completed"],
        expected_compensated=expected["compensated"],
    )


def _wait(
    container: Container,
    ids: list[str],
    timeout: float,
    started: float,
    report: object,
) -> dict[str, SagaStatus]:
    statuses: dict[str, SagaStatus] = {}
    open_ids = list(ids)
    while open_ids and time.monotonic() - started < timeout:
        still: list[str] = []
        with container.uow_factory() as uow:
            for saga_id in open_ids:
                record = uow.sagas.get(saga_id)
                assert record is not None
                statuses[saga_id] = record.state.status
                if not record.state.status.terminal:
                    still.append(saga_id)
        open_ids = still
        if callable(report):
            report(len(ids) - len(open_ids))
        if open_ids:
            time.sleep(0.25)
    return statuses


def _audit(container: Container, since: datetime) -> AuditReport:
    from saga.app.audit import audit

    scan = container.scan_ledger("sagafacts")
    return audit(container.uow_factory, container.registry, scan, since=since)
