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

import pytest

from tests.chaos.run import CI_FAULTS, FAULT_KINDS, ChaosConfig, failures, run, table

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]

CI_SEED = 6
CI_SAGAS = 200


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
    assert all(result["faults_by_kind"].get(kind, 0) >= 1 for kind in FAULT_KINDS)
    outcomes = result["outcomes"]
    assert outcomes.get("completed", 0) and outcomes.get("compensated", 0)
    assert result["ledger_valid"]["do"] and result["ledger_valid"]["undo"]
    assert result["dlq"]["messages"] == result["dlq"]["poison_injected"] > 0
