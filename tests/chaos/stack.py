"""The chaos run's stack: the deployment's own process set on a database and queues of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import fields
from pathlib import Path

from saga.config import PREFIX, Settings
from saga.entrypoints.processes import Child, LocalProcessSet, load_processes, local_env
from saga.entrypoints.processes import select as select_processes
from tests.chaos.ledgers import (
    FabricLedger,
    fabric_release,
)
from tests.chaos.plan import ChaosConfig
from tests.support.processes import ROOT


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
                workdir / "fabricnet",
                fabric_release(config.fabric),
                config.batch_timeout,
                # HA: peer0.org1 and peer1.org1, both in org1's profile.
                org1_peers=2 if config.topology == "ha" else 1,
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
