"""A chaos run's checks: what the store, the ledger, the DLQ and saga audit must show after it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient, SigningIdentity, load_connection_profile
from saga.adapters.fabric.ledger_scan import LedgerScan, scan_ledger
from saga.adapters.rabbitmq.dead_letters import RabbitDeadLetters
from saga.adapters.sql.tables import sagas
from saga.config import Settings
from saga.core.definitions import chain_key
from tests.chaos.faults import FaultRecord
from tests.chaos.plan import TERMINAL, ChaosConfig
from tests.chaos.sagas import LEDGER, LEDGER_STEP
from tests.chaos.workload import WorkloadResult
from tests.fault.checks import DECLINED, PAID, REJECTED, doubled_rows, views


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
    first_any = text(
        "SELECT min(updated_at) FROM sagas WHERE status = 'completed' AND updated_at > :t"
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
            down = datetime.fromtimestamp(f.down_at, UTC)
            f.first_saga_after_fault = _seconds_since(
                c.execute(first_any, {"t": down}).scalar_one(), f.down_at
            )
            f.first_ledger_saga_after_fault = _seconds_since(
                c.execute(first_completed, {"name": LEDGER, "t": down}).scalar_one(), f.down_at
            )
            f.chain_steps_while_down = int(
                c.execute(
                    during,
                    {"step": LEDGER_STEP, "a": datetime.fromtimestamp(f.down_at, UTC), "b": up},
                ).scalar_one()
            )


def in_flight_outcomes(
    engine: Engine,
    faults: list[FaultRecord],
    in_flight_ids: list[list[str]],
    scan: LedgerScan,
    baseline: str,
) -> None:
    """Per fault: how the sagas open when it struck ended, and how many of them have a
    second VALID ledger record or a doubled local write."""
    doubled = {str(saga_id) for saga_id, _, _ in doubled_rows(engine)}
    statuses = select(sagas.c.id, sagas.c.status)
    with engine.connect() as c:
        status_of = {str(i): str(st) for i, st in c.execute(statuses)}
    for f, ids in zip(faults, in_flight_ids, strict=True):
        ledger = ledger_counts_per_saga(scan, ids, baseline)
        f.in_flight_outcomes = dict(Counter(status_of.get(i, "lost") for i in ids))
        f.in_flight_duplicates = sum(
            1 for i in ids if i in doubled or max(ledger.get(i, (0, 0))) > 1
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
    dead = RabbitDeadLetters(settings).browse()
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
