"""Run the benchmarks: one command, a table, a JSON file.

    python -m bench all --quick          # ~6 minutes: small sizes
    python -m bench all                  # full sizes (1,000-10,000 sagas; ~1 hour+)
    python -m bench local|relay|chain|growth|soak [--quick]
    python -m bench chain-real [--quick] [--batch-timeouts 2,0.25]   # real Fabric 2.5
    python -m bench floor|scale [--quick]   # PostgreSQL/RabbitMQ floor; 1-4 workers, 1-2 relays
    python -m bench floor scale [--quick]   # several in one invocation (scale against that floor)

Every figure that has a target is a ratio against a baseline measured in the
same invocation on the same machine. Results go to bench/results/<name>.json
(and all.json for `all`); the soak (20 minutes) is only part of `all` with
--soak, or run on its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, machine

RESULTS = ROOT / "bench" / "results"


def run_relay(quick: bool) -> dict[str, Any]:
    """bench/relay_confirms.py, as it is, in a child process; its three lines parsed."""
    argv = [sys.executable, str(ROOT / "bench" / "relay_confirms.py")]
    argv += ["--messages", "2000", "--single", "400"] if quick else []
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    values = [
        float(line.split()[-2 if "messages/s" in line else -1].rstrip("x"))
        for line in out.splitlines()
        if line.strip()
    ]
    return {
        "batched_per_second": values[0],
        "one_at_a_time_per_second": values[1],
        "ratio": round(values[0] / values[1], 1),
    }


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str, str]] = []

    def add(name: str, ours: Any, base: Any, ratio: Any, target: str) -> None:
        rows.append((name, str(ours), str(base), str(ratio), target))

    if "local" in results:
        r = results["local"]
        o, n = r["ours"], r["naive"]
        add(
            "1. local 3-step sagas/s (ours vs naive Celery)",
            o["sagas_per_second"],
            n["sagas_per_second"],
            r["throughput_ratio"],
            ">= 0.8",
        )
        add("   latency p50 ms", o["latency_p50_ms"], n["latency_p50_ms"], "", "")
        add("   latency p99 ms", o["latency_p99_ms"], n["latency_p99_ms"], "", "")
        q = r["ours_every_step_queued"]
        add(
            "1b. ... every step through the queue (INLINE_STEPS=0)",
            q["sagas_per_second"],
            n["sagas_per_second"],
            r["throughput_ratio_every_step_queued"],
            "",
        )
        add(
            "   DB round trips per saga, inline | queued (naive ~9-12)",
            o["db_round_trips_per_saga"],
            q["db_round_trips_per_saga"],
            "",
            "",
        )
        ov = r["overhead"]
        add("4. orchestrator-added time per step p50 ms", ov["added_p50_ms"], "", "", "< 20")
        add("   ... p99 ms", ov["added_p99_ms"], "", "", "")
        add("   ... of which transit (relay+broker) p50 ms", ov["transit_p50_ms"], "", "", "")
        add("   ... of which handling in the worker p50 ms", ov["handling_p50_ms"], "", "", "")
    if "relay" in results:
        r = results["relay"]
        add(
            "2. relay msgs/s (batched vs one confirm at a time)",
            r["batched_per_second"],
            r["one_at_a_time_per_second"],
            r["ratio"],
            ">= 5",
        )
    if "chain" in results:
        r = results["chain"]
        add(
            "3. chain sagas/s vs devnet alone committed tx/s",
            r["ours"]["sagas_per_second"],
            r["devnet_alone"]["committed_tx_per_second"],
            r["ratio"],
            ">= 0.8",
        )
        add(
            "   worker utilisation (busy/wall), mean",
            r["ours"]["worker_utilisation_mean"],
            "",
            "",
            "",
        )
        add("   longest task / block time", r["ours"]["longest_task_vs_block_time"], "", "", "< 1")
    if "chain-real" in results:
        for bt, r in results["chain-real"]["runs"].items():
            ours = r["ours"]["sagas_per_second"]
            add(
                f"3r. chain sagas/s vs real Fabric plain client tx/s, {bt} s blocks",
                ours,
                r["plain_client"]["committed_tx_per_second"],
                r["ratio_vs_plain_client"],
                ">= 0.8",
            )
            add(
                f"3r. ... vs naive inline-commit Celery task, {bt} s blocks",
                ours,
                r["naive_inline"]["sagas_per_second"],
                r["ratio_vs_naive"],
                ">= 1.5",
            )
        if "in_flight" in results["chain-real"]:
            f = results["chain-real"]["in_flight"]
            add(
                f"3r. chain tx in flight at once (max), {f['batch_timeout_s']} s blocks"
                f" of up to {f['max_message_count']}",
                f["max_chain_tx_in_flight"],
                f"{f['in_flight_at_first_commit']} at 1st commit",
                f"1st block {f['first_block_tx']} tx",
                ">= 1000",
            )
            add(
                f"   longest chain task / block time ({f['task_ms_max']} ms)",
                f["longest_task_vs_block_time"],
                "",
                "",
                "< 1",
            )
            # The rest of the CPU per process is in the JSON (in_flight.cpu).
            add(
                f"   chain-executor ({f['executor_in_flight_setting']} in flight) CPU s, cores",
                f["cpu"]["cpu_s"].get("saga chain-executor", ""),
                f["cpu"]["cores_busy"].get("saga chain-executor", ""),
                "",
                "",
            )
    if "floor" in results:
        pg, mq = results["floor"]["postgres"], results["floor"]["rabbitmq"]
        add(
            "7. floor: PostgreSQL sagas/s (pgbench, a saga's txns)",
            pg["sagas_per_second"],
            pg["commits_per_second"],
            f"{pg['commits_per_saga']} commits",
            "",
        )
        add(
            "   ... same without the outbox NOTIFY trigger",
            pg["sagas_per_second_without_notify"],
            "",
            "",
            "",
        )
        add(
            "   naive shape: INSERT commits/s | sagas/s (/3)",
            pg["naive_commits_per_second"],
            pg["naive_sagas_per_second"],
            "",
            "",
        )
        add(
            "7. floor: RabbitMQ msgs/s confirmed batched | one at a time",
            mq["confirmed_batched_per_second"],
            mq["confirmed_one_at_a_time_per_second"],
            "",
            "",
        )
        add("   RabbitMQ consume + ack msgs/s", mq["consume_ack_per_second"], "", "", "")
    if "scale" in results:
        r = results["scale"]
        for point in r["points"]:
            bound = point.get("cpu_bound_sagas_per_second")
            add(
                f"8. scale {point['workers']}w {point['relays']}r: sagas/s | own-CPU bound",
                point["sagas_per_second"],
                bound or "",
                round(point["sagas_per_second"] / bound, 2) if bound else "",
                f"load {point['load1']} busy {point['machine_busy_fraction']}",
            )
        for relays, k in r["knee"].items():
            most = max(pt["workers"] for pt in r["points"])
            at = k["knee_at_workers"]
            add(f"   knee ({relays}) at workers", at or f"none up to {most}", "", "", "")
    if "floor_fractions" in results:
        for name, value in results["floor_fractions"].items():
            add(f"   fraction of floor: {name}", value, "", "", "")
    if "growth" in results:
        for run in results["growth"]["runs"]:
            add(
                f"5. growth {run['sagas']} x {run['steps']} steps: sagas/s | trips/saga",
                run["sagas_per_second"],
                run["db_round_trips_per_saga"],
                "",
                "",
            )
        for k, v in results["growth"]["flatness"].items():
            add(
                f"   {k}: largest/smallest trips | throughput",
                v["round_trips_ratio_largest_vs_smallest"],
                v["throughput_ratio_largest_vs_smallest"],
                "",
                "trips ~1.0",
            )
    for row in results.get("settings", []):
        add(f"   setting {row['variant']}: sagas/s", row["sagas_per_second"], "", "", "")
    if "soak" in results:
        r = results["soak"]
        add(
            "6. soak relay RSS kB start -> end",
            r["relay_rss_kb_start_end"][0],
            r["relay_rss_kb_start_end"][1],
            "",
            "flat",
        )
        add(
            "   worker RSS kB start -> end",
            r["worker_rss_kb_start_end"][0],
            r["worker_rss_kb_start_end"][1],
            "",
            "flat",
        )
        add(
            "   unpublished outbox max | backlog at end",
            r["unpublished_max"],
            r["backlog_end"],
            "",
            "no growth",
        )
    head = ("benchmark", "ours", "baseline", "ratio", "target")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(5)]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "what",
        nargs="+",
        help="benchmarks to run in one invocation (e.g. `floor scale`: scale's commits against "
        "that floor); all = every one but soak (unless --soak)",
        choices=[
            "all",
            "floor",
            "local",
            "relay",
            "chain",
            "chain-real",
            "growth",
            "settings",
            "scale",
            "soak",
        ],
    )
    p.add_argument("--quick", action="store_true", help="small sizes (minutes, not an hour)")
    p.add_argument("--soak", action="store_true", help="include the soak in `all`")
    p.add_argument("--soak-minutes", type=float, default=20.0)
    p.add_argument(
        "--recheck-delay",
        type=float,
        default=30.0,
        help="SAGA_CHAIN_RECHECK_DELAY for the chain benchmark (default: the product's, 30)",
    )
    p.add_argument(
        "--batch-timeouts",
        default="2,0.25",
        help="BatchTimeouts (s) of the real Fabric networks of chain-real, comma-separated",
    )
    p.add_argument(
        "--in-flight-batch-timeout",
        type=float,
        default=90.0,
        help="BatchTimeout (s) of chain-real's in-flight network: no block is cut while "
        "the executor submits",
    )
    p.add_argument("--out", default=None, help="JSON file (default bench/results/<what>.json)")
    a = p.parse_args()
    from bench import chain_inflight, local, soak

    q = a.quick
    results: dict[str, Any] = {"machine": machine(), "quick": q}
    todo = (
        ["floor", "local", "relay", "chain", "chain-real", "growth", "settings", "scale"]
        + (["soak"] if a.soak else [])
        if "all" in a.what
        else list(dict.fromkeys(a.what))
    )
    for name in todo:
        print(f"== {name}", flush=True)
        if name == "local":
            results["local"] = local.bench_local(400 if q else 2000, 30 if q else 200)
        elif name == "relay":
            results["relay"] = run_relay(q)
        elif name == "chain":
            results["chain"] = chain_inflight.bench_chain(
                300 if q else 1000, 2.0, 500, recheck_delay=a.recheck_delay
            )
        elif name == "chain-real":
            from bench import chain_real

            results["chain-real"] = chain_real.bench_chain_real(
                300 if q else 1000,
                [float(x) for x in a.batch_timeouts.split(",")],
                in_flight=1000,
                in_flight_batch_timeout=a.in_flight_batch_timeout,
                naive_n=100 if q else 200,
            )
        elif name == "floor":
            from bench import floor

            results["floor"] = floor.bench_floor(q)
        elif name == "scale":
            from bench import scale

            results["scale"] = scale.bench_scale(
                200 if q else 1000,
                floor_commits_per_second=results.get("floor", {})
                .get("postgres", {})
                .get("commits_per_second"),
            )
        elif name == "growth":
            sizes = [300, 1000] if q else [1000, 10000]
            results["growth"] = local.bench_growth(sizes, [3, 10])
        elif name == "settings":
            results["settings"] = local.bench_settings(200 if q else 1000)
        elif name == "soak":
            results["soak"] = soak.bench_soak(1.0 if q else a.soak_minutes, 10.0)
        print(json.dumps(results[name], indent=1)[:3000], flush=True)
    from bench.floor import fractions

    if fractions(results):
        results["floor_fractions"] = fractions(results)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    text = table(results)
    if "scale" in results:
        text += f"\n\nScale-out ({results['scale']['note']}):\n" + "\n".join(
            f"  {p['workers']} worker(s), {p['relays']} relay(s): {p['verdict']}"
            for p in results["scale"]["points"]
        )
    print("\n" + text)
    out = Path(a.out) if a.out else RESULTS / f"{'-'.join(a.what)}{'-quick' if q else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results["table"] = text.splitlines()
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
