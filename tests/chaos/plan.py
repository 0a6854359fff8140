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
    # The HA topology's (--topology ha): the node leading the step queue of a
    # three-node RabbitMQ cluster SIGKILLed, then started again; the PostgreSQL
    # primary stopped (immediate) and its synchronous standby promoted (once per run:
    # the old primary cannot come back without a rebuild); the Raft leader SIGKILLed
    # (a crash, where orderer_leader_outage is a graceful stop), then started again.
    # On the HA network gateway_peer_outage kills peer0.org1 while peer1.org1 serves.
    "rabbit_leader_kill",
    "pg_failover",
    "orderer_leader_kill",
)


# Each gets its share of held-back sagas (see hold_per_fault), sent as it strikes.
OUTAGES = frozenset(
    {
        "chaincode_outage",
        "peer_outage",
        "gateway_peer_outage",
        "orderer_leader_outage",
        "rabbit_leader_kill",
        "pg_failover",
        "orderer_leader_kill",
    }
)


TOPOLOGIES = ("single", "ha")


# Kinds that need the HA topology, and kinds it has no use for: the machine's own
# RabbitMQ and PostgreSQL, which the single topology restarts, carry nothing of an HA run.
HA_ONLY = frozenset({"rabbit_leader_kill", "pg_failover"})
SINGLE_ONLY = frozenset({"rabbitmq_restart", "postgres_restart"})


BOTH = frozenset(LEDGERS)


# Where each kind applies: the devnet has no orderers or peers of its own to stop
# (devnet_kill takes its whole Fabric double down), a real network has no devnet.
FAULT_LEDGERS: dict[str, frozenset[str]] = {kind: BOTH for kind in FAULT_KINDS} | {
    "devnet_kill": frozenset({"devnet"}),
    "peer_outage": frozenset({"fabric"}),
    "gateway_peer_outage": frozenset({"fabric"}),
    "orderer_leader_outage": frozenset({"fabric"}),
    "orderer_leader_kill": frozenset({"fabric"}),
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


# HA topology on real Fabric: the process kills beside the four member faults.
HA_FULL_FAULTS: dict[str, int] = {
    "worker_kill": 6,
    "relay_kill": 3,
    "watcher_kill": 3,
    "rabbit_leader_kill": 2,
    "pg_failover": 1,
    "orderer_leader_kill": 2,
    "gateway_peer_outage": 2,
}


HA_CI_FAULTS: dict[str, int] = {
    "worker_kill": 1,
    "rabbit_leader_kill": 1,
    "pg_failover": 1,
    "orderer_leader_kill": 1,
    "gateway_peer_outage": 1,
}


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
    # The HA members: the rest of their cluster carries on meanwhile, so the product
    # must not wait for them; a node's or member's start adds its own seconds.
    "rabbit_leader_kill": (3.0, 8.0),
    "pg_failover": (0.0, 0.0),  # a failover has no way back (DETECTION_SECONDS apply)
    "orderer_leader_kill": (5.0, 10.0),
}


KILLED_PROCESS = {
    "worker_kill": "worker",
    "relay_kill": "relay",
    "watcher_kill": "watcher",
    "devnet_kill": "devnet",
    "chaincode_restart": "chaincode",
    "chaincode_outage": "chaincode",
}


def fault_presets(ledger: str, topology: str = "single") -> tuple[dict[str, int], dict[str, int]]:
    """(full run's fault counts, CI run's) for a ledger and topology."""
    if topology == "ha":
        return dict(HA_FULL_FAULTS), dict(HA_CI_FAULTS)
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
    # "ha": RabbitMQ cluster, PostgreSQL primary + synchronous standby, Fabric with two
    # Org1 peers (tests/chaos/topology.py); needs ledger "fabric".
    topology: str = "single"
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
    # The share of sagas held back in all (None: 15 %; on the HA topology 45 %, with
    # the faults placed before half the sagas are terminal). An HA member's restart
    # (a RabbitMQ node takes 10-20 s) outlasts a small window's load: without a larger
    # share most HA faults would strike an idle system.
    hold_share: float | None = None

    # Faults fire when this fraction of the sagas is terminal (uniform in between);
    # None: (0.05, 0.85), on the HA topology (0.05, 0.5) (what the held sagas leave
    # reachable before the first fault releases any).
    fault_span: tuple[float, float] | None = None
    quiescence_timeout: float = 600.0
    enqueue_timeout: float = 180.0  # per saga, across every retry of its request
    workdir: Path | None = None
    keep: bool = False  # keep the database and queues (for a look afterwards)
    out: Path | None = None
    say: Callable[[str], None] = field(default=print, repr=False)

    @property
    def definitions(self) -> str:
        return {"ours": "tests.chaos.sagas", "naive": "tests.chaos.naive_sagas"}[self.baseline]

    @property
    def span(self) -> tuple[float, float]:
        if self.fault_span is not None:
            return self.fault_span
        return (0.05, 0.5) if self.topology == "ha" else (0.05, 0.85)

    def held_per_fault(self) -> int:
        planned = sum(n for kind, n in self.faults.items() if kind in OUTAGES)
        if planned == 0:
            return 0
        share = self.hold_share
        if share is None:
            share = 0.45 if self.topology == "ha" else 0.15
        most = int(self.sagas * share) // planned
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
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {TOPOLOGIES}, not {self.topology!r}")
        if self.topology == "ha" and self.ledger != "fabric":
            raise ValueError("the ha topology runs on real Fabric: give ledger 'fabric'")
        other = SINGLE_ONLY if self.topology == "ha" else HA_ONLY
        wrong = [k for k, n in self.faults.items() if n and k in other]
        if wrong:
            raise ValueError(f"fault kinds {wrong} do not apply to the {self.topology} topology")
        if self.faults.get("pg_failover", 0) > 1:
            raise ValueError(
                "pg_failover can happen once per run: the old primary cannot rejoin as a "
                "standby without a rebuild, so a second failover has no standby to promote"
            )


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
    low, high = config.span
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
