"""Benchmark 6: steady load for a while; relay and worker RSS, unpublished outbox rows.

    python -m bench soak [--minutes 20] [--rate 10]

Feeds `--rate` bench-3 sagas per second (below the measured capacity, so the
system should keep up) for `--minutes`, sampling every 30 s: RSS of the relay
and of the worker (main process plus its pool children), unpublished outbox
rows, sagas started and terminal.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from sqlalchemy import func, select

from bench.common import retrying, rss_kb, scratch_database
from bench.local import TERMINAL, start_stack
from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import outbox, sagas
from saga.app.orchestrator import Orchestrator
from saga.registry_loader import load_registry


def _counts(engine: Any) -> tuple[int, int]:
    with engine.connect() as c:
        unpublished = c.execute(
            select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        ).scalar_one()
        terminal = c.execute(
            select(func.count()).select_from(sagas).where(sagas.c.status.in_(TERMINAL))
        ).scalar_one()
    return int(unpublished), int(terminal)


def bench_soak(minutes: float, rate: float, sample_every: float = 30.0) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    with scratch_database("bench_soak") as url:
        engine = create_engine(url)
        with start_stack(url) as stack:
            relay, worker = stack.procs.started[0], stack.procs.started[1]
            orch = Orchestrator(load_registry("bench.sagas"), SqlUnitOfWorkFactory(engine))
            started = time.monotonic()
            end = started + minutes * 60
            next_sample = started
            i = 0
            while True:
                now = time.monotonic()
                if now >= next_sample or now >= end:
                    with engine.connect() as c:
                        unpublished = c.execute(
                            select(func.count())
                            .select_from(outbox)
                            .where(outbox.c.published_at.is_(None))
                        ).scalar_one()
                        terminal = c.execute(
                            select(func.count())
                            .select_from(sagas)
                            .where(sagas.c.status.in_(TERMINAL))
                        ).scalar_one()
                    samples.append(
                        {
                            "t": round(now - started),
                            "relay_rss_kb": rss_kb(relay.pid),
                            "worker_rss_kb": rss_kb(worker.pid),
                            "unpublished_outbox": unpublished,
                            "started": i,
                            "terminal": terminal,
                            "load1": round(__import__("os").getloadavg()[0], 2),
                        }
                    )
                    print(f"  soak {samples[-1]}", flush=True)
                    next_sample += sample_every
                    if now >= end:
                        break
                    if not (relay.alive() and worker.alive()):
                        raise RuntimeError(stack.procs.report())
                target = int((now - started) * rate)
                while i < target:
                    payload = {"order_id": f"soak-{i}", "amount_cents": 100}
                    retrying(partial(orch.enqueue, "bench-3", payload))
                    i += 1
                time.sleep(0.02)
        engine.dispose()
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    return {
        "minutes": minutes,
        "rate_per_second": rate,
        "samples": samples,
        "relay_rss_kb_start_end": [first["relay_rss_kb"], last["relay_rss_kb"]],
        "worker_rss_kb_start_end": [first["worker_rss_kb"], last["worker_rss_kb"]],
        "unpublished_max": max(s["unpublished_outbox"] for s in samples),
        "backlog_end": last["started"] - last["terminal"],
    }


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--rate", type=float, default=10)
    p.add_argument("--out", default="bench/results/soak.json")
    a = p.parse_args()
    result = bench_soak(a.minutes, a.rate)
    from pathlib import Path

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
