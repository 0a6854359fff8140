"""Benchmark 7: the physical floor, what PostgreSQL and RabbitMQ alone move on this machine.

    python -m bench floor [--quick]

PostgreSQL: one `bench-3` saga is run in this process through the product's own
code (the Orchestrator's enqueue, then the step message handled the way a worker
task handles it, following local steps inline), with every statement and its
parameters recorded from SQLAlchemy's events. Those transactions become a pgbench
script, statement for statement (ids replaced by fresh ones per run so unique keys
hold, timestamps and JSON as literals), and pgbench runs it against a scratch
database migrated with the product's schema (its indexes and outbox trigger)
from 1, 2, 4 (and 8) clients, prepared statements as psycopg 3 sends them after
its fifth execution. One script run = one saga's enqueue and worker transactions,
so its rate is the most sagas/s PostgreSQL could take if it did nothing else. The
relay's claim is left out: one claim serves a whole batch of sagas. For the naive
chain, the same with its one statement: a single autocommitted INSERT.

Because the script is taken from the code as it runs, it follows the store as it
changes (fewer statements, fused steps): the JSON lists what it ran.

RabbitMQ: persistent messages the size of a step message onto a quorum queue
(the product's queue type) through aiormq, the client the relay uses: confirms
awaited per batch of 500, confirms awaited one at a time, and consumed with a
manual ack per message (prefetch 100).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import event

from bench.common import AMQP_URL, retrying, scratch_database

PGBENCH = "/usr/bin/pgbench"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# A colon followed by a name is a pgbench variable; literals must not contain one.
_PGBENCH_VAR = re.compile(r":(?=[A-Za-z0-9_])")


@dataclass
class Transaction:
    """The statements of one commit; autocommit: sent without BEGIN/COMMIT (one statement)."""

    statements: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    autocommit: bool = False


def capture_saga(database_url: str, saga: str = "bench-3") -> list[Transaction]:
    """The transactions one saga's enqueue and worker run, as the product sends them."""
    from saga.bootstrap import Container
    from saga.config import Settings
    from saga.core.step_message import StepMessage

    settings = Settings(database_url=database_url, broker_url=AMQP_URL, definitions="bench.sagas")
    container = Container(settings)
    engine = container.engine
    transactions: list[Transaction] = []
    recording = False

    def statement(conn: Any, _cur: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        if not recording:
            return
        if not transactions:
            transactions.append(Transaction())
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            transactions[-1].autocommit = True
        rows = params if many else [params]
        for row in rows:
            transactions[-1].statements.append((sql, dict(row or {})))

    def begin(_c: Any) -> None:
        if recording:
            transactions.append(Transaction())

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "begin", begin)
    try:
        orchestrator = container.orchestrator()
        recording = True
        orchestrator.enqueue(saga, {"order_id": "floor-1", "amount_cents": 100})
        recording = False
        reader = container.outbox_reader()
        with reader.claim(500) as claimed:  # the relay's share: not recorded
            reader.mark_published([p.id for p in claimed])
        recording = True
        for pending in claimed:
            orchestrator.handle_reporting(
                StepMessage.from_body(pending.body), inline=settings.worker_inline_steps
            )
        recording = False
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "begin", begin)
        engine.dispose()
    return [t for t in transactions if t.statements]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def _literal(value: Any, ids: dict[str, int]) -> str:
    """A parameter as SQL text pgbench sends unchanged (ids become per-run expressions)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return repr(value) if not isinstance(value, Decimal) else str(value)
    if isinstance(value, dt.datetime):
        return f"to_timestamp({value.timestamp()!r})"
    if isinstance(value, dt.timedelta):
        return f"make_interval(secs => {value.total_seconds()!r})"
    if hasattr(value, "obj"):  # psycopg's Json/Jsonb wrappers, with the dumps SQLAlchemy gave
        value = (getattr(value, "dumps", None) or _dumps)(value.obj)
    if isinstance(value, list | tuple):  # psycopg sends a bare list as an array
        if not value:
            return "'{}'"
        return "ARRAY[" + ", ".join(_literal(v, ids) for v in value) + "]"
    if isinstance(value, dict):
        value = _dumps(value)
    text = str(value)
    if _UUID.match(text):
        k = ids.setdefault(text, len(ids))
        return f"(md5(:r::text || '-{k}')::uuid::text)"
    quoted = "'" + text.replace("'", "''") + "'"
    # chr(58) is ':'; pgbench would read ":name" inside a literal as a variable.
    return "(" + _PGBENCH_VAR.sub("' || chr(58) || '", quoted) + ")"


def _bind(params: Mapping[str, Any], ids: dict[str, int], m: re.Match[str]) -> str:
    return _literal(params[m.group(1)], ids)


def pgbench_script(transactions: Sequence[Transaction]) -> str:
    """One saga's transactions as a pgbench script: BEGIN, the statements, COMMIT each
    (an autocommitted statement as it is: the product sends no BEGIN for it)."""
    ids: dict[str, int] = {}
    lines = ["\\set r random(1, 9223372036854775806)"]
    for transaction in transactions:
        if not transaction.autocommit:
            lines.append("BEGIN;")
        for sql, params in transaction.statements:
            body = _PLACEHOLDER.sub(partial(_bind, params, ids), sql)
            lines.append(" ".join(body.replace("%%", "%").split()) + ";")
        if not transaction.autocommit:
            lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


NAIVE_SCRIPT = (
    "\\set r random(1, 9223372036854775806)\n"
    "INSERT INTO order_payment_events (saga_id, order_id, step, action, amount_cents, created_at)"
    " VALUES (md5(:r::text)::uuid::text, 'naive', 's1', 'write', 100, clock_timestamp());\n"
)


def run_pgbench(url: str, script: str, clients: int, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="bench-floor-") as fh:
        fh.write(script)
        fh.flush()
        argv = [PGBENCH, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients)]
        argv += ["-T", str(int(max(1, seconds))), "-f", fh.name, url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed ({out.returncode}): {out.stderr[-2000:]}")
    text = out.stdout

    def grab(pattern: str) -> float:
        m = re.search(pattern, text)
        if m is None:
            raise RuntimeError(f"pgbench output without {pattern!r}:\n{text}")
        return float(m.group(1))

    return {
        "clients": clients,
        "runs_per_second": round(grab(r"tps = ([0-9.]+)"), 1),
        "latency_avg_ms": round(grab(r"latency average = ([0-9.]+) ms"), 3),
        "runs": int(grab(r"actually processed: ([0-9]+)")),
        "failed": int(grab(r"failed transactions: ([0-9]+)")),
    }


def _sql(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(statement)


def _server_settings(url: str) -> dict[str, str]:
    import psycopg

    names = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "commit_delay")
    with psycopg.connect(url) as c:
        return {n: str(c.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


def postgres_floor(seconds: float, clients: Sequence[int]) -> dict[str, Any]:
    with scratch_database("bench_floor") as url:
        transactions = retrying(lambda: capture_saga(url))
        script = pgbench_script(transactions)
        commits = len(transactions)
        statements = sum(len(t.statements) for t in transactions)
        saga_runs = [run_pgbench(url, script, c, seconds) for c in clients]
        naive_runs = [run_pgbench(url, NAIVE_SCRIPT, c, seconds) for c in clients]
        server = _server_settings(url)
        # The outbox trigger's pg_notify makes PostgreSQL take one cluster-wide lock
        # from before a notifying commit until after it (its WAL flush included), so
        # those commits cannot share a flush. The same script without it says what
        # that lock costs.
        _sql(url, "ALTER TABLE outbox DISABLE TRIGGER USER")
        quiet_runs = [run_pgbench(url, script, c, seconds) for c in clients]
    best = max(saga_runs, key=lambda r: r["runs_per_second"])
    naive_best = max(naive_runs, key=lambda r: r["runs_per_second"])
    quiet_best = max(quiet_runs, key=lambda r: r["runs_per_second"])
    return {
        "server": server,
        "saga": "bench-3",
        "commits_per_saga": commits,
        "autocommitted_statements_per_saga": sum(t.autocommit for t in transactions),
        "statements_per_saga": statements,
        "statements": [
            [" ".join(sql.split()[:4]) for sql, _ in t.statements] for t in transactions
        ],
        "script": script.splitlines(),
        "saga_script_by_clients": saga_runs,
        "sagas_per_second": best["runs_per_second"],
        "commits_per_second": round(best["runs_per_second"] * commits, 1),
        "best_clients": best["clients"],
        "saga_script_without_notify_by_clients": quiet_runs,
        "sagas_per_second_without_notify": quiet_best["runs_per_second"],
        "naive_insert_by_clients": naive_runs,
        "naive_commits_per_second": naive_best["runs_per_second"],
        # The naive chain commits three single-INSERT transactions per saga.
        "naive_sagas_per_second": round(naive_best["runs_per_second"] / 3, 1),
    }


def _step_like_body() -> bytes:
    """A body the size of a real step message (the relay's Celery task message)."""
    body = {
        "message_id": str(uuid.uuid4()),
        "saga_id": str(uuid.uuid4()),
        "saga": "bench-3",
        "version": 1,
        "step": "s1",
        "attempt": 1,
        "phase": "do",
    }
    return json.dumps([[body], {}, {"callbacks": None, "errbacks": None, "chain": None}]).encode()


async def _rabbit(url: str, batched: int, batch: int, single: int) -> dict[str, Any]:
    import aio_pika
    import aiormq

    queue = f"bench.floor.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(url)
    try:
        wrapper = await connection.channel(publisher_confirms=True)
        channel = await wrapper.get_underlay_channel()
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        props = aiormq.spec.Basic.Properties(delivery_mode=2, content_type="application/json")
        body = _step_like_body()

        async def publish(count: int) -> None:
            results = await asyncio.gather(
                *(
                    channel.basic_publish(body, routing_key=queue, properties=props)
                    for _ in range(count)
                )
            )
            if any(not isinstance(r, aiormq.spec.Basic.Ack) for r in results):
                raise RuntimeError("a publish was not confirmed")

        await publish(100)  # warm-up: connection, queue leader
        start = time.perf_counter()
        for i in range(0, batched, batch):
            await publish(min(batch, batched - i))
        batched_rate = batched / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(single):
            await publish(1)
        single_rate = single / (time.perf_counter() - start)

        total = 100 + batched + single
        consumer = await connection.channel()
        cchannel = await consumer.get_underlay_channel()
        await cchannel.basic_qos(prefetch_count=100)
        done = asyncio.get_running_loop().create_future()
        got = 0

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal got
            assert message.delivery_tag is not None
            await cchannel.basic_ack(message.delivery_tag)
            got += 1
            if got == total and not done.done():
                done.set_result(None)

        start = time.perf_counter()
        ok = await cchannel.basic_consume(queue, on_message, no_ack=False)
        await asyncio.wait_for(done, timeout=600)
        consume_rate = total / (time.perf_counter() - start)
        if ok.consumer_tag:  # before the queue goes, or the broker cancels it with a warning
            await cchannel.basic_cancel(ok.consumer_tag)
        await channel.queue_delete(queue)
    finally:
        await connection.close()
    return {
        "queue_type": "quorum",
        "message_bytes": len(body),
        "batch": batch,
        "confirmed_batched_per_second": round(batched_rate, 1),
        "confirmed_one_at_a_time_per_second": round(single_rate, 1),
        "consume_ack_per_second": round(consume_rate, 1),
        "messages": {"batched": batched, "one_at_a_time": single, "consumed": total},
    }


def rabbitmq_floor(batched: int, single: int, batch: int = 500) -> dict[str, Any]:
    return asyncio.run(_rabbit(AMQP_URL, batched, batch, single))


def bench_floor(quick: bool) -> dict[str, Any]:
    import os

    load_start = [round(x, 2) for x in os.getloadavg()]
    pg = postgres_floor(5.0 if quick else 10.0, (1, 2, 4) if quick else (1, 2, 4, 8))
    mq = rabbitmq_floor(3000 if quick else 20000, 300 if quick else 2000)
    return {
        "postgres": pg,
        "rabbitmq": mq,
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
    }


# (name, the figure in the results, the floor it is divided by), each a key path.
_FRACTIONS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "local ours sagas/s / PostgreSQL saga floor",
        ("local", "ours", "sagas_per_second"),
        ("postgres", "sagas_per_second"),
    ),
    (
        "local unfused (one transaction per step) sagas/s / PostgreSQL saga floor",
        ("local", "ours_unfused", "sagas_per_second"),
        ("postgres", "sagas_per_second"),
    ),
    (
        "local every-step-queued sagas/s / PostgreSQL saga floor",
        ("local", "ours_every_step_queued", "sagas_per_second"),
        ("postgres", "sagas_per_second"),
    ),
    (
        "naive sagas/s / PostgreSQL naive floor (INSERTs/s / 3)",
        ("local", "naive", "sagas_per_second"),
        ("postgres", "naive_sagas_per_second"),
    ),
    (
        # Every step through the queue: one broker message per step.
        "local every-step-queued steps/s / RabbitMQ consume+ack floor",
        ("local", "ours_every_step_queued", "steps_per_second"),
        ("rabbitmq", "consume_ack_per_second"),
    ),
    (
        "relay batched msgs/s / RabbitMQ batched-confirm floor",
        ("relay", "batched_per_second"),
        ("rabbitmq", "confirmed_batched_per_second"),
    ),
    (
        "relay one-at-a-time msgs/s / RabbitMQ one-at-a-time floor",
        ("relay", "one_at_a_time_per_second"),
        ("rabbitmq", "confirmed_one_at_a_time_per_second"),
    ),
    (
        "scale best sagas/s / PostgreSQL saga floor",
        ("scale", "best", "sagas_per_second"),
        ("postgres", "sagas_per_second"),
    ),
)


def _get(data: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def fractions(results: Mapping[str, Any]) -> dict[str, float]:
    """Each benchmark's figure as a fraction of the floor taken in the same run.

    A figure a benchmark no longer reports is skipped, never an error: this runs
    at the end of `all`, after an hour of measurements that must still be written.
    """
    floor = results.get("floor")
    out: dict[str, float] = {}
    if not isinstance(floor, Mapping):
        return out
    for name, figure, base in _FRACTIONS:
        a, b = _get(results, figure), _get(floor, base)
        if isinstance(a, int | float) and isinstance(b, int | float) and a > 0 and b > 0:
            out[name] = round(a / b, 3)
    return out
