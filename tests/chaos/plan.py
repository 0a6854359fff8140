"""A chaos run's settings and its seeded plans: the workload, the faults and when, the poison."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saga_fabricnet import FabricRelease
from tests.chaos.ledgers import (
    CHAOS_BATCH_TIMEOUT,
    LEDGERS,
)
from tests.chaos.sagas import LEDGER, LOCAL

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
