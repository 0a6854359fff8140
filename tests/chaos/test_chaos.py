"""The CI chaos run: about 200 sagas, a fixed seed, every fault kind at least once.

Same code as the full run (`python -m tests.chaos run`), smaller: the whole
process set (API, relay, two prefork workers, watcher, beat, devnet, chaincode)
on the real PostgreSQL and RabbitMQ, which this test stops and starts once each
(tests/fault/services.py brings them back whatever happens). A missing server
fails the test through the fixtures; it never skips.

A failure prints the summary table, the failed invariants with examples, and
the seed; `python -m tests.chaos run --sagas 200 --ci-faults --seed 6` replays it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from saga_fabricnet import FabricRelease
from tests.chaos.plan import (
    CI_FAULTS,
    FABRIC_CI_FAULTS,
    FULL_FAULTS,
    HA_CI_FAULTS,
    ChaosConfig,
)
from tests.chaos.report import failures, recovery_table, table
from tests.chaos.run import run
from tests.support.fabricnet import FABRIC_25, fabric_31_release, fabric_release

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]

CI_SEED = 6
CI_SAGAS = 200
# Sized to finish within ~4 min (2.5) and ~3 min (3.1) on 2 shared cores: the outages
# alone take about a minute, the load has to last that long.
FABRIC_CI_SAGAS = 120
FABRIC_31_CI_SAGAS = 80


def test_chaos_run_every_fault_kind_no_invariant_broken(
    pg_admin_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    config = ChaosConfig(
        sagas=CI_SAGAS,
        seed=CI_SEED,
        faults=dict(CI_FAULTS),
        window=25,  # the load goes on while the faults fire
        quiescence_timeout=300.0,
        workdir=tmp_path / "run",
        out=tmp_path / "chaos.json",
    )
    result = run(config)
    print("\n" + table([result]))
    assert result["ok"], f"seed {CI_SEED}: {failures(result)}\nlogs: {result['workdir']}/logs"
    assert result["sagas_accepted"] == CI_SAGAS
    assert all(result["faults_by_kind"].get(kind, 0) >= 1 for kind in FULL_FAULTS)
    outcomes = result["outcomes"]
    assert outcomes.get("completed", 0) and outcomes.get("compensated", 0)
    assert result["ledger_valid"]["do"] and result["ledger_valid"]["undo"]
    assert result["dlq"]["messages"] == result["dlq"]["poison_injected"] > 0


# -- on a real Fabric network (saga_fabricnet) ---------------------------------------
#
# The acceptance, CI-sized: the chaincode, peer0.org2 (the other org's
# endorser) and the Raft leader among three orderers each down for 15-25 s while the
# example sagas run under worker / relay / watcher kills and a RabbitMQ and a
# PostgreSQL restart. Every saga without a simulated business failure completes (no
# compensation, no operator), exactly one VALID record per completed chain step on
# the real ledger (qscc block scan), `saga audit` exits 0. A missing Fabric binary
# fails the test (tests/support/fabricnet.py), never skips.
# Replay: python -m tests.chaos run --ledger fabric --fabric-version 2.5.16 --ci-faults \
#     --sagas 120 --window 25 --seed 6


def _fabric_chaos(
    release: FabricRelease, sagas: int, faults: dict[str, int], tmp_path: Path
) -> dict[str, Any]:
    config = ChaosConfig(
        sagas=sagas,
        seed=CI_SEED,
        faults=faults,
        ledger="fabric",
        fabric=release,
        window=25,
        quiescence_timeout=240.0,
        workdir=tmp_path / "run",
        out=tmp_path / "chaos.json",
    )
    result = run(config)
    print("\n" + table([result]) + "\n\n" + recovery_table([result]))
    assert result["ok"], f"seed {CI_SEED}: {failures(result)}\nlogs: {result['workdir']}/logs"
    assert result["sagas_accepted"] == sagas
    assert result["fabric_version"] == release.version
    for kind, n in faults.items():
        assert result["faults_by_kind"].get(kind, 0) == n, kind
    # The outages really met the sagas: some waited, and none spent a try on them.
    assert result["ledger_waits"]["sagas_waited"] > 0
    assert result["counts"]["not_completed_without_business_failure"] == 0
    assert result["ledger_valid"]["do"] and result["ledger_valid"]["undo"]
    assert result["ledger"]["duplicate_transactions"] == 0
    return result


def test_chaos_on_fabric_25_with_ledger_outages(
    pg_admin_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    _fabric_chaos(fabric_release(default=FABRIC_25), FABRIC_CI_SAGAS, FABRIC_CI_FAULTS, tmp_path)


def test_chaos_on_fabric_31_with_ledger_outages(
    pg_admin_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    # Smaller: the three outages and one worker kill (Fabric 3.1 gets a chaos run).
    faults = {
        "worker_kill": 1,
        "chaincode_outage": 1,
        "peer_outage": 1,
        "orderer_leader_outage": 1,
    }
    _fabric_chaos(fabric_31_release(), FABRIC_31_CI_SAGAS, faults, tmp_path)


# -- on the HA topology (issue 15 item 4) --------------------------------------------
#
# A three-node RabbitMQ cluster (quorum queues on all three), a PostgreSQL primary with a
# synchronous standby, Fabric 2.5 with two Org1 peers and three Raft orderers, all the
# run's own (tests/chaos/topology.py). Faults beside a worker kill: the node leading
# the step queue SIGKILLed and started again, the PostgreSQL primary stopped (immediate)
# and the standby promoted (once: there is no way back without a rebuild), the Raft
# leader SIGKILLed and started again, the client's gateway peer (peer0.org1) SIGKILLed
# and started again. ~2.5 min here (the cluster's start ~35 s).
# Replay: python -m tests.chaos run --ledger fabric --topology ha --ci-faults \
#     --sagas 60 --window 25 --seed 6

HA_CI_SAGAS = 60


def test_chaos_on_the_ha_topology(pg_admin_url: str, rabbitmq_url: str, tmp_path: Path) -> None:
    config = ChaosConfig(
        sagas=HA_CI_SAGAS,
        seed=CI_SEED,
        faults=dict(HA_CI_FAULTS),
        ledger="fabric",
        topology="ha",
        fabric=fabric_release(default=FABRIC_25),
        window=25,
        quiescence_timeout=240.0,
        workdir=tmp_path / "run",
        out=tmp_path / "chaos.json",
    )
    result = run(config)
    print("\n" + table([result]) + "\n\n" + recovery_table([result]))
    assert result["ok"], f"seed {CI_SEED}: {failures(result)}\nlogs: {result['workdir']}/logs"
    assert result["topology"] == "ha"
    assert result["sagas_accepted"] == HA_CI_SAGAS
    for kind, n in HA_CI_FAULTS.items():
        assert result["faults_by_kind"].get(kind, 0) == n, kind
    assert result["counts"]["not_completed_without_business_failure"] == 0
    assert result["ledger_duplicate_transactions"] == 0
    assert result["counts"]["doubled_local_writes"] == 0
    faults = {f["kind"]: f for f in result["faults"]}
    # Each member fault struck sagas in flight, and every one of them ended.
    for kind in ("rabbit_leader_kill", "pg_failover", "orderer_leader_kill", "gateway_peer_outage"):
        f = faults[kind]
        assert f["in_flight"] > 0, f
        assert sum(f["in_flight_outcomes"].values()) == f["in_flight"], f
        assert set(f["in_flight_outcomes"]) <= {"completed", "compensated"}, f
        assert f["in_flight_duplicates"] == 0, f
        assert f["first_saga_after_fault"] is not None, f
    # The failover really happened: the standby took over.
    assert faults["pg_failover"]["target"] == "pg-a -> pg-b"


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"topology": "ha", "ledger": "devnet", "faults": {}}, "runs on real Fabric"),
        ({"topology": "ha", "faults": {"pg_failover": 2}}, "once per run"),
        ({"topology": "ha", "faults": {"postgres_restart": 1}}, "do not apply to the ha"),
        ({"topology": "single", "faults": {"rabbit_leader_kill": 1}}, "do not apply to the single"),
    ],
)
def test_chaos_config_refuses_faults_its_topology_cannot_take(
    changes: dict[str, Any], says: str
) -> None:
    values: dict[str, Any] = {"ledger": "fabric"} | changes
    with pytest.raises(ValueError, match=says):
        ChaosConfig(**values).check()
