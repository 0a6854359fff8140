"""Injecting a chaos run's faults at their planned points, and the record of each."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import select

from saga.adapters.sql.tables import sagas
from tests.chaos.ledgers import (
    FABRIC_MEMBER,
)
from tests.chaos.plan import KILLED_PROCESS, OUTAGES, TERMINAL, ChaosConfig, Planned
from tests.chaos.progress import Progress
from tests.chaos.stack import Stack
from tests.chaos.topology import HaTopology
from tests.fault.services import start_postgres, start_rabbitmq, stop_postgres, stop_rabbitmq

# Seconds the held sagas get, at most, to be accepted before an HA fault strikes.
HELD_HEAD_START = 3.0


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
    # The sagas open (started, not terminal) in the database as the fault struck, and
    # after the run (see `outcomes_of_in_flight`) how they ended and how many of them
    # broke a no-duplicate rule (a second VALID record, a doubled local write).
    in_flight: int = 0
    in_flight_outcomes: dict[str, int] = field(default_factory=dict)
    in_flight_duplicates: int | None = None
    # Seconds from the fault's start (down_at) to the first saga, and the first
    # ledger saga, completed after it: while an HA member is down the rest of its
    # cluster serves, so the product should not wait for its return.
    first_saga_after_fault: float | None = None
    first_ledger_saga_after_fault: float | None = None


class Injector:
    def __init__(
        self,
        plan: list[Planned],
        stack: Stack,
        progress: Progress,
        config: ChaosConfig,
        t0: float,
        topology: HaTopology | None = None,
    ) -> None:
        self.plan = plan
        self.stack = stack
        self.progress = progress
        self.config = config
        self.t0 = t0
        self.topology = topology
        self.done: list[FaultRecord] = []
        # Parallel to `done`: the ids of the sagas open as each fault struck.
        self.in_flight_ids: list[list[str]] = []
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
                    if self.config.topology == "ha":
                        self._await_held()
                open_ids = self._open_ids()
                record = self._inject(item)
                record.in_flight = len(open_ids)
                self.in_flight_ids.append(open_ids)
                self.done.append(record)
        finally:
            self.finished.set()

    def _await_held(self) -> None:
        """Until half the sagas just released are open in the store (HELD_HEAD_START
        at most): the HA member then dies under sagas in flight, not an idle system
        (its cluster's other members would otherwise make its loss a non-event)."""
        want = max(1, self.config.held_per_fault() // 2)
        deadline = time.monotonic() + HELD_HEAD_START
        while len(self._open_ids()) < want and time.monotonic() < deadline:
            if self._abort.wait(0.05):
                return

    def _open_ids(self) -> list[str]:
        try:
            with self.progress.engine.connect() as c:
                rows = c.execute(select(sagas.c.id).where(sagas.c.status.not_in(TERMINAL)))
                return [str(r[0]) for r in rows]
        except Exception:  # the store unreachable: the fault strikes all the same
            return []

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
            elif item.kind == "rabbit_leader_kill":
                ha = self._ha(item.kind)
                index = ha.kill_queue_leader(self.stack.settings.step_queue)
                record.target = ha.rabbit.node(index).name
                say(
                    f"[fault] {record.started:7.1f}s SIGKILL RabbitMQ node {record.target} "
                    f"(leads the step queue) for {item.downtime:.1f}s"
                )
                try:
                    time.sleep(item.downtime)
                finally:
                    ha.restart_node(index)
                    record.up_at = time.time()
                say(f"[fault] {record.target} back in the cluster")
            elif item.kind == "pg_failover":
                ha = self._ha(item.kind)
                say(f"[fault] {record.started:7.1f}s PostgreSQL primary stopped (immediate)")
                record.target = ha.fail_over()
                say(f"[fault] PostgreSQL failed over: {record.target}")
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

    def _ha(self, kind: str) -> HaTopology:
        if self.topology is None:
            raise RuntimeError(f"{kind} needs the ha topology (--topology ha)")
        return self.topology
