"""Injecting a chaos run's faults at their planned points, and the record of each."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tests.chaos.ledgers import (
    FABRIC_MEMBER,
)
from tests.chaos.plan import KILLED_PROCESS, OUTAGES, ChaosConfig, Planned
from tests.chaos.progress import Progress
from tests.chaos.stack import Stack
from tests.fault.services import start_postgres, start_rabbitmq, stop_postgres, stop_rabbitmq


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
