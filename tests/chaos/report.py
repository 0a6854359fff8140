"""A chaos run's results as tables: invariants, recovery times, what failed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tests.chaos.plan import FAULT_KINDS


def table(results: list[Mapping[str, Any]]) -> str:
    """The summary table; two results (ours, naive) side by side."""
    names = [_column(r) for r in results]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, get: Callable[[Mapping[str, Any]], Any]) -> None:
        values = []
        for r in results:
            try:
                value = get(r)
            except (KeyError, TypeError):
                value = "-"
            values.append("-" if value is None else str(value))
        rows.append((label, values))

    row("seed", lambda r: r["seed"])
    row("sagas accepted", lambda r: r["sagas_accepted"])
    for status in ("completed", "compensated", "failed"):
        row(f"  {status}", _lookup("outcomes", status))
    row(
        "  ledger (v2) / local (v1)",
        lambda r: _pair(r["ledger_sagas"], r["sagas_accepted"] - r["ledger_sagas"]),
    )
    row(
        "requests: sent twice / retried",
        lambda r: _pair(
            r["requests"]["sent_twice_on_purpose"],
            r["requests"]["http_requests"]
            - r["requests"]["enqueue_calls"]
            + r["requests"]["retried_after_server_error"],
        ),
    )
    for kind in FAULT_KINDS:
        if any(r.get("faults_by_kind", {}).get(kind) for r in results):
            row(f"fault {kind}", _lookup("faults_by_kind", kind))
    row("unplanned process restarts", lambda r: r["unplanned_restarts"])
    row(
        "poison injected / in DLQ",
        lambda r: _pair(r["dlq"]["poison_injected"], r["dlq"]["messages"]),
    )
    row("lost", lambda r: r["counts"]["lost"])
    row("stuck (not terminal)", lambda r: r["counts"]["stuck"])
    row("unexpected outcome", lambda r: r["counts"]["unexpected_outcome"])
    row(
        "  not completed, no business failure",
        lambda r: r["counts"].get("not_completed_without_business_failure", 0),
    )
    row(
        "sagas that waited for the ledger",
        lambda r: _pair(r["ledger_waits"]["sagas_waited"], r["ledger_waits"]["waits"]) + " waits",
    )
    row("chain step tries failed", lambda r: r["ledger_waits"]["chain_step_tries_failed"])
    row(
        "VALID payments / reversals",
        lambda r: _pair(r["ledger_valid"]["do"], r["ledger_valid"]["undo"]),
    )
    row("DUPLICATE ledger transactions", lambda r: r["ledger_duplicate_transactions"])
    row("payments never reversed", lambda r: r["unreversed_payments"])
    row("doubled local writes", lambda r: r["counts"]["doubled_local_writes"])
    row("compensation unmatched", lambda r: r["counts"]["compensation_unmatched"])
    row("duplicate sagas", lambda r: r["counts"]["duplicate_sagas"])
    row("DLQ unexpected", lambda r: r["counts"]["dlq_unexpected"])
    row("audit (exit code)", lambda r: r["audit"]["exit_code"])
    row("time to quiescence (s)", lambda r: r["seconds"]["to_quiescence_after_last_fault"])
    row("total time (s)", lambda r: r["seconds"]["total"])
    row("invariants", lambda r: "PASS" if r.get("ok") else "FAIL")
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(len(n), *(len(v[i]) for _, v in rows)) + 2 for i, n in enumerate(names)]
    lines = ["".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, cols, strict=True))]
    lines += [
        label.ljust(width) + "".join(v.rjust(c) for v, c in zip(values, cols, strict=True))
        for label, values in rows
    ]
    return "\n".join(lines)


def _column(result: Mapping[str, Any]) -> str:
    ledger = str(result.get("ledger_kind", "devnet"))
    if result.get("fabric_version"):
        ledger = f"fabric {result['fabric_version']}"
    if result.get("topology") == "ha":
        ledger += " HA"
    return f"{result.get('baseline', '?')} / {ledger}"


def recovery_table(results: list[Mapping[str, Any]]) -> str:
    """One line per fault: when, what, how long down, and how soon the product
    completed sagas again (seconds after the service came back)."""
    lines = []
    for r in results:
        lines.append(f"{_column(r)} (seed {r.get('seed')}):")
        lines.append(
            "  at (s)  fault                  target                 down (s)  "
            "net ready  1st ledger saga  1st chain step  chain steps while down"
        )
        for f in r.get("faults", []):

            def cell(v: object) -> str:
                return "-" if v is None else str(v)

            lines.append(
                f"  {f['started']:6.1f}  {f['kind']:<22} {f['target'][:22]:<22} "
                f"{f['seconds']:8.1f}  {cell(f.get('network_ready_after')):>9}  "
                f"{cell(f.get('first_completed_after')):>15}  "
                f"{cell(f.get('first_chain_step_after')):>14}  "
                f"{cell(f.get('chain_steps_while_down')):>22}"
                + (f"  ERROR {f['error']}" if f.get("error") else "")
            )
        lines += _in_flight_lines(r)
    return "\n".join(lines)


def _in_flight_lines(r: Mapping[str, Any]) -> list[str]:
    """Per fault: the sagas open as it struck, how they ended, duplicates among them,
    and seconds from the fault's start to the first saga (and ledger saga) completed."""
    faults = [f for f in r.get("faults", []) if f.get("in_flight_duplicates") is not None]
    if not faults:
        return []
    lines = [
        "  fault                  target                        in flight  "
        "outcomes of those in flight              dup  1st saga  1st ledger saga"
    ]
    for f in faults:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(f["in_flight_outcomes"].items()))
        lines.append(
            f"  {f['kind']:<22} {f['target'][:29]:<29} {f['in_flight']:9}  "
            f"{outcomes or '-':<40} {f['in_flight_duplicates']:3}  "
            f"{_cell(f.get('first_saga_after_fault')):>8}  "
            f"{_cell(f.get('first_ledger_saga_after_fault')):>15}"
        )
    return lines


def _cell(v: object) -> str:
    return "-" if v is None else str(v)


def _lookup(section: str, key: str) -> Callable[[Mapping[str, Any]], Any]:
    def get(result: Mapping[str, Any]) -> Any:
        return result[section].get(key, 0)

    return get


def _pair(a: object, b: object) -> str:
    return f"{a} / {b}"


def failures(result: Mapping[str, Any]) -> str:
    bad = {k: v for k, v in result.get("invariants", {}).items() if v}
    lines = [f"invariants failed: {bad}"] if bad else []
    for kind, examples in result.get("examples", {}).items():
        lines.append(f"{kind}:")
        lines += [f"  {e}" for e in examples[:5]]
    if result.get("fault_errors"):
        lines.append(f"fault errors: {result['fault_errors']}")
    if result.get("audit", {}).get("exit_code"):
        lines.append(f"audit: {result['audit']}")
    return "\n".join(lines)
