"""Benchmarks 1, 4 and 5: local sagas vs a naive Celery chain, overhead per step, growth.

    python -m bench local  [--sagas 2000] [--overhead 100]
    python -m bench growth [--sizes 1000,10000] [--steps 3,10]

Same broker (RabbitMQ), same PostgreSQL server, same table and row per step,
same worker count (one worker command with a prefork pool of 2 processes).
"""

from __future__ import annotations

import importlib
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.dialects import postgresql

from bench.common import (
    Stack,
    delete_queue,
    percentile,
    retrying,
    scratch_database,
    spawn_naive,
    statement_counts,
    timing_records,
)
from saga.adapters.sql import SqlSagaStarts, SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.repository import idle_sagas_query
from saga.adapters.sql.tables import inbox, outbox, sagas
from saga.app.orchestrator import Orchestrator
from saga.examples.order_payment_tables import order_payment_events
from saga.registry_loader import load_registry

TERMINAL = ("completed", "compensated", "failed")


def _ms(values: list[float], p: float) -> float | None:
    v = percentile(values, p)
    return None if v is None else round(v * 1000, 1)


class _Counter:
    """Round trips the bench process itself makes (the enqueue transactions)."""

    def __init__(self, engine: Engine) -> None:
        self.counts: Counter[str] = Counter()
        event.listen(engine, "before_cursor_execute", lambda *a: self.counts.update(["stmt"]))
        # An autocommitted statement (the enqueue's) sends no BEGIN, though
        # SQLAlchemy still fires its begin event.
        event.listen(
            engine,
            "begin",
            lambda conn: (
                None
                if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
                else self.counts.update(["BEGIN"])
            ),
        )
        event.listen(engine, "commit", lambda *a: self.counts.update(["COMMIT"]))


def _wait(done: Callable[[], int], n: int, alive: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = retrying(done)
        if got >= n:
            return
        if not alive():
            raise RuntimeError(f"a process died with {got}/{n} done")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{got}/{n} done after {timeout:.0f}s")
        time.sleep(0.2)


def run_ours(
    stack: Stack, engine: Engine, n: int, steps: int, timeout: float = 3600
) -> dict[str, Any]:
    """Enqueue n sagas of `steps` local steps at once, wait for all; throughput and latency."""
    orch = Orchestrator(
        load_registry("bench.sagas"), SqlUnitOfWorkFactory(engine), starts=SqlSagaStarts(engine)
    )
    counter = _Counter(engine)
    before = statement_counts(stack.stmt_dir)
    run = uuid.uuid4().hex[:6]
    enq: dict[str, float] = {}
    started = time.time()
    for i in range(n):
        t = time.time()
        payload = {"order_id": f"o-{run}-{i}", "amount_cents": 100 + i}
        saga_id = retrying(partial(orch.enqueue, f"bench-{steps}", payload)).saga_id
        enq[saga_id] = t
    enqueued = time.time() - started
    ids = list(enq)

    def done() -> int:
        with engine.connect() as c:
            return int(
                c.execute(
                    select(func.count()).where(sagas.c.id.in_(ids), sagas.c.status.in_(TERMINAL))
                ).scalar_one()
            )

    _wait(done, n, lambda: all(p.alive() for p in stack.procs.started), timeout)
    time.sleep(1.0)  # let the counters flush
    with engine.connect() as c:
        rows = c.execute(
            select(sagas.c.id, sagas.c.status, sagas.c.updated_at).where(sagas.c.id.in_(ids))
        ).all()
    ends = {r.id: r.updated_at.timestamp() for r in rows}
    statuses = Counter(r.status for r in rows)
    wall = max(ends.values()) - started
    latency = [ends[s] - enq[s] for s in ids]
    after = statement_counts(stack.stmt_dir)
    delta = after - before
    own = counter.counts
    per_saga = {k: round(v / n, 2) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])}
    statements = sum(
        v for k, v in delta.items() if k not in ("BEGIN", "COMMIT", "ROLLBACK", "pre-ping")
    )
    round_trips = sum(delta.values()) + sum(own.values())
    return {
        "sagas": n,
        "steps": steps,
        "statuses": dict(statuses),
        "seconds": round(wall, 2),
        "enqueue_seconds": round(enqueued, 2),
        "sagas_per_second": round(n / wall, 1),
        "steps_per_second": round(n * steps / wall, 1),
        "latency_p50_ms": _ms(latency, 50),
        "latency_p99_ms": _ms(latency, 99),
        "db_round_trips_per_saga": round(round_trips / n, 1),
        "db_statements_per_saga_workers_relay": round(statements / n, 1),
        "db_round_trips_per_step": round(round_trips / n / steps, 2),
        "enqueue_round_trips_per_saga": round(sum(own.values()) / n, 1),
        "enqueue_statements_per_saga": round(own["stmt"] / n, 2),
        "enqueue_transactions_per_saga": round(own["COMMIT"] / n, 2),
        # Worker and relay transactions (COMMITs) per saga; the relay's share
        # falls as its claims batch several sagas' messages.
        "transactions_per_saga_workers_relay": round(delta["COMMIT"] / n, 2),
        "statements_per_saga_by_kind": per_saga,
    }


def run_naive(database_url: str, work: Any, n: int, timeout: float = 3600) -> dict[str, Any]:
    """The same n three-write sagas as a plain Celery chain (default settings)."""
    queue = f"bench.naive.{uuid.uuid4().hex[:8]}"
    os.environ.update(BENCH_NAIVE_DB=database_url, BENCH_NAIVE_QUEUE=queue)
    from bench.common import AMQP_URL

    os.environ["BENCH_NAIVE_BROKER"] = AMQP_URL
    import bench.naive_app as naive

    naive = importlib.reload(naive)
    from celery import chain

    proc = spawn_naive(work, database_url, queue)
    engine = create_engine(database_url)
    try:
        time.sleep(4)  # the worker connects and declares its queue
        run = uuid.uuid4().hex[:6]
        enq: dict[str, float] = {}
        started = time.time()
        with naive.app.connection_for_write() as conn, naive.app.producer_or_acquire() as _:
            for i in range(n):
                sid, oid, amount = str(uuid.uuid4()), f"naive-{run}-{i}", 100 + i
                t = time.time()
                chain(
                    naive.step.s(None, sid, oid, "s1", amount),
                    naive.step.s(sid, oid, "s2", amount),
                    naive.step.s(sid, oid, "s3", amount),
                ).apply_async(connection=conn)
                enq[sid] = t
        enqueued = time.time() - started
        like = f"naive-{run}-%"

        def done() -> int:
            with engine.connect() as c:
                return int(
                    c.execute(
                        select(func.count()).where(
                            order_payment_events.c.order_id.like(like),
                            order_payment_events.c.step == "s3",
                        )
                    ).scalar_one()
                )

        _wait(done, n, lambda: proc.poll() is None, timeout)
        with engine.connect() as c:
            rows = c.execute(
                select(order_payment_events.c.saga_id, order_payment_events.c.created_at).where(
                    order_payment_events.c.order_id.like(like), order_payment_events.c.step == "s3"
                )
            ).all()
        ends = {r.saga_id: r.created_at.timestamp() for r in rows}
        wall = max(ends.values()) - started
        latency = [ends[s] - enq[s] for s in ends]
        return {
            "sagas": n,
            "steps": 3,
            "seconds": round(wall, 2),
            "enqueue_seconds": round(enqueued, 2),
            "sagas_per_second": round(n / wall, 1),
            "steps_per_second": round(n * 3 / wall, 1),
            "latency_p50_ms": _ms(latency, 50),
            "latency_p99_ms": _ms(latency, 99),
        }
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except Exception:
            os.killpg(proc.pid, 9)
        engine.dispose()
        delete_queue(queue)


def run_overhead(stack: Stack, engine: Engine, m: int) -> dict[str, Any]:
    """One saga at a time (nothing queued behind it): what the orchestrator adds per step.

    Per step k of a saga, from the bench hook's timestamps (see bench/sagas.py):
      added(k)   = commit(k) - commit(k-1) - own(k)      commit(0) = enqueue returned
      transit(k) = task start(k) - commit(k-1)            outbox -> relay -> broker -> worker
      handling(k)= task end(k) - task start(k) - own(k)   inbox, lock, state, outbox, history
    own(k) is the step function's own time (its one INSERT).
    """
    orch = Orchestrator(load_registry("bench.sagas"), SqlUnitOfWorkFactory(engine))
    returned: dict[str, float] = {}
    for i in range(m):
        payload = {"order_id": f"ovh-{i}", "amount_cents": 100}
        saga_id = retrying(partial(orch.enqueue, "bench-3", payload)).saga_id
        returned[saga_id] = time.time()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = retrying(partial(_status, engine, saga_id))
            if status in TERMINAL:
                break
            time.sleep(0.005)
    time.sleep(1.5)  # the hook flushes its buffer every 0.5 s
    by_saga: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in timing_records(stack.timing_dir):
        if r["saga_id"] in returned and r["phase"] == "do":
            by_saga[r["saga_id"]].append(r)
    added: list[float] = []
    transit: list[float] = []
    handling: list[float] = []
    own: list[float] = []
    for saga_id, records in by_saga.items():
        records.sort(key=lambda r: r["pre"])
        previous = returned[saga_id]
        for r in records:
            fn = (r["fn1"] - r["fn0"]) if r["fn0"] is not None else 0.0
            added.append(r["post"] - previous - fn)
            transit.append(r["pre"] - previous)
            handling.append(r["post"] - r["pre"] - fn)
            own.append(fn)
            previous = r["post"]
    return {
        "sagas": m,
        "steps_measured": len(added),
        "relay_poll_interval": stack.settings.relay_poll_interval,
        "added_p50_ms": _ms(added, 50),
        "added_p99_ms": _ms(added, 99),
        "transit_p50_ms": _ms(transit, 50),
        "transit_p99_ms": _ms(transit, 99),
        "handling_p50_ms": _ms(handling, 50),
        "handling_p99_ms": _ms(handling, 99),
        "step_own_p50_ms": _ms(own, 50),
    }


def _status(engine: Engine, saga_id: str) -> str:
    with engine.connect() as c:
        return str(c.execute(select(sagas.c.status).where(sagas.c.id == saga_id)).scalar_one())


def explain(engine: Engine) -> dict[str, list[str]]:
    """EXPLAIN ANALYZE of the hot queries on the database as the run left it."""
    with engine.connect() as c:
        some = c.execute(select(sagas.c.id).order_by(sagas.c.updated_at.desc()).limit(1)).scalar()
        msg = c.execute(select(inbox.c.message_id).limit(1)).scalar()
    claim = (
        select(outbox.c.id, outbox.c.message_id, outbox.c.saga_id, outbox.c.body)
        .where(outbox.c.published_at.is_(None), outbox.c.available_at <= func.now())
        .order_by(outbox.c.id)
        .limit(500)
        .with_for_update(skip_locked=True)
    )
    queries = {
        "relay claim": claim,
        "saga lock": select(sagas).where(sagas.c.id == some).with_for_update(),
        "inbox check": select(inbox.c.message_id).where(inbox.c.message_id == msg),
        "sweeper candidates": idle_sagas_query(datetime.now(UTC) - timedelta(seconds=150), 500),
    }
    out: dict[str, list[str]] = {}
    with engine.begin() as c:
        for name, query in queries.items():
            sql = str(
                query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
            )
            plan = (
                c.execute(text("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + sql))
                .scalars()
                .all()
            )
            out[name] = [str(line) for line in plan]
        c.rollback()
    return out


def start_stack(url: str, **extra: Any) -> Stack:
    stack = Stack(url, **extra)
    relay = stack.relay()
    worker = stack.worker(concurrency=2)
    time.sleep(5)  # workers connect before the clock starts
    if not (relay.alive() and worker.alive()):
        raise RuntimeError(stack.procs.report())
    return stack


def bench_local(sagas_n: int, overhead_n: int, poll: float | None = None) -> dict[str, Any]:
    """Ours with the defaults (following local steps inline), ours with every step
    through the queue (SAGA_WORKER_INLINE_STEPS=0), and the naive chain, in one run.

    The per-step overhead (benchmark 4) is taken with every step through the queue:
    one task per step is what its timestamps measure, and it is the slower path.

    `ours_unfused`: the defaults but SAGA_WORKER_FUSE_STEPS=0 (inline steps one
    transaction each, as before fused runs), for a same-run comparison.
    """
    extra: dict[str, Any] = {}
    if poll is not None:
        extra["relay_poll_interval"] = poll
    with scratch_database("bench_local") as url:
        engine = create_engine(url)
        with start_stack(url, **extra) as stack:
            run_ours(stack, engine, min(50, sagas_n), 3)  # warm-up
            ours = run_ours(stack, engine, sagas_n, 3)
        with start_stack(url, extra={"worker_fuse_steps": False}, **extra) as stack:
            run_ours(stack, engine, min(50, sagas_n), 3)
            unfused = run_ours(stack, engine, sagas_n, 3)
        with start_stack(url, extra={"worker_inline_steps": 0}, **extra) as stack:
            run_ours(stack, engine, min(50, sagas_n), 3)
            queued = run_ours(stack, engine, sagas_n, 3)
            overhead = run_overhead(stack, engine, overhead_n)
            work = stack.work
        naive = run_naive(url, work, sagas_n)
        engine.dispose()
    return {
        "ours": ours,
        "ours_unfused": unfused,
        "ours_every_step_queued": queued,
        "naive": naive,
        "throughput_ratio": round(ours["sagas_per_second"] / naive["sagas_per_second"], 2),
        "throughput_ratio_unfused": round(
            unfused["sagas_per_second"] / naive["sagas_per_second"], 2
        ),
        "throughput_ratio_every_step_queued": round(
            queued["sagas_per_second"] / naive["sagas_per_second"], 2
        ),
        "overhead": overhead,
        "relay_poll_interval": poll,
    }


def bench_growth(sizes: list[int], step_counts: list[int]) -> dict[str, Any]:
    runs = []
    plans: dict[str, list[str]] = {}
    for steps in step_counts:
        with scratch_database("bench_growth") as url:
            engine = create_engine(url)
            with start_stack(url) as stack:
                for n in sizes:
                    r = run_ours(stack, engine, n, steps)
                    with engine.connect() as c:
                        r["table_rows_after"] = {
                            "sagas": c.execute(select(func.count()).select_from(sagas)).scalar(),
                            "outbox": c.execute(select(func.count()).select_from(outbox)).scalar(),
                            "inbox": c.execute(select(func.count()).select_from(inbox)).scalar(),
                        }
                    runs.append(r)
                    print(
                        f"  growth: {n} x {steps} steps: {r['sagas_per_second']} sagas/s, "
                        f"{r['db_round_trips_per_saga']} round trips/saga",
                        flush=True,
                    )
                if steps == step_counts[-1]:
                    plans = explain(engine)
            engine.dispose()
    flat: dict[str, Any] = {}
    for steps in step_counts:
        mine = [r for r in runs if r["steps"] == steps]
        if len(mine) >= 2:
            flat[f"{steps} steps"] = {
                "round_trips_ratio_largest_vs_smallest": round(
                    mine[-1]["db_round_trips_per_saga"] / mine[0]["db_round_trips_per_saga"], 3
                ),
                "throughput_ratio_largest_vs_smallest": round(
                    mine[-1]["sagas_per_second"] / mine[0]["sagas_per_second"], 3
                ),
            }
    return {"runs": runs, "flatness": flat, "explain": plans}


def bench_settings(n: int) -> list[dict[str, Any]]:
    """Throughput of the same n 3-step sagas under the settings that matter, same run."""
    variants: list[tuple[str, dict[str, Any]]] = [
        ("prefetch 1 (default)", {}),
        ("prefetch 4", {"worker_prefetch": 4}),
        ("prefetch 16", {"worker_prefetch": 16}),
        ("relay batch 50", {"relay_batch_size": 50}),
        ("inline steps 0 (every step queued)", {"worker_inline_steps": 0}),
    ]
    out = []
    with scratch_database("bench_settings") as url:
        engine = create_engine(url)
        for name, extra in variants:
            with start_stack(url, extra=extra) as stack:
                run_ours(stack, engine, min(50, n), 3)
                r = run_ours(stack, engine, n, 3)
            row = {"variant": name, **{k: r[k] for k in ("sagas_per_second", "latency_p50_ms")}}
            print(f"  settings: {row}", flush=True)
            out.append(row)
        engine.dispose()
    return out
