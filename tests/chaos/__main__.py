"""python -m tests.chaos run [...] | python -m tests.chaos table A.json [B.json]"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tests.chaos.ledgers import CHAOS_BATCH_TIMEOUT, FABRIC_VERSIONS, LEDGERS
from tests.chaos.plan import FAULT_KINDS, TOPOLOGIES, ChaosConfig, fault_presets
from tests.chaos.report import failures, recovery_table, table
from tests.chaos.run import run


def _faults(values: list[str], preset: dict[str, int]) -> dict[str, int]:
    faults = dict(preset)
    for value in values:
        kind, sep, count = value.partition("=")
        if not sep or kind not in FAULT_KINDS or not count.isdigit():
            raise SystemExit(f"--fault {value!r}: give KIND=COUNT, KIND one of {FAULT_KINDS}")
        faults[kind] = int(count)
    return faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one chaos run; exit 1 if an invariant fails")
    r.add_argument("--sagas", type=int, default=2000)
    r.add_argument("--seed", type=int, default=None, help="replay a run (printed at its start)")
    r.add_argument("--baseline", choices=["ours", "naive"], default="ours")
    r.add_argument("--workers", type=int, default=2, help="`saga worker` processes")
    r.add_argument("--concurrency", type=int, default=2, help="pool size of each worker")
    r.add_argument("--window", type=int, default=120, help="sagas in flight at most")
    r.add_argument("--poison", type=int, default=3, help="poison messages to publish")
    r.add_argument("--ci-faults", action="store_true", help="every fault kind once (workers 2)")
    r.add_argument("--ledger", choices=LEDGERS, default="devnet", help="devnet or real Fabric")
    r.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="single",
        help="ha: 3-node RabbitMQ cluster, PostgreSQL primary + sync standby, Fabric with "
        "two Org1 peers (needs --ledger fabric); its faults: rabbit_leader_kill, "
        "pg_failover (once: no way back without a rebuild), orderer_leader_kill, "
        "gateway_peer_outage",
    )
    r.add_argument(
        "--fabric-version",
        default="2.5.16",
        metavar="|".join(FABRIC_VERSIONS) + "|DIR",
        help="with --ledger fabric: a release under .fabric/ or a release folder",
    )
    r.add_argument(
        "--batch-timeout", type=float, default=CHAOS_BATCH_TIMEOUT, help="Fabric BatchTimeout"
    )
    r.add_argument(
        "--fault", action="append", default=[], metavar="KIND=N", help="override a fault count"
    )
    r.add_argument("--quiescence-timeout", type=float, default=600.0)
    r.add_argument("--dir", type=Path, default=None, help="work directory (logs, devnet)")
    r.add_argument("--keep", action="store_true", help="keep the database and the queues")
    r.add_argument("--out", type=Path, default=Path("chaos.json"))
    t = sub.add_parser("table", help="print the summary table of one or two result files")
    t.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)

    if args.command == "table":
        results = [json.loads(f.read_text()) for f in args.files]
        print(table(results))
        print()
        print(recovery_table(results))
        return 0 if all(r.get("ok") for r in results) else 1

    def say(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    config = ChaosConfig(
        sagas=args.sagas,
        seed=args.seed,
        baseline=args.baseline,
        workers=args.workers,
        concurrency=args.concurrency,
        window=args.window,
        poison=args.poison,
        faults=_faults(
            args.fault, fault_presets(args.ledger, args.topology)[1 if args.ci_faults else 0]
        ),
        ledger=args.ledger,
        topology=args.topology,
        fabric=args.fabric_version,
        batch_timeout=args.batch_timeout,
        quiescence_timeout=args.quiescence_timeout,
        workdir=args.dir,
        keep=args.keep,
        out=args.out,
        say=say,
    )
    result = run(config)
    print()
    print(table([result]))
    print()
    print(recovery_table([result]))
    if not result["ok"]:
        print(failures(result))
    print(f"\nseed {result['seed']}; result in {args.out}; logs in {result['workdir']}/logs")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
