"""The console's saga list with many sagas in the store: response times over HTTP.

    python -m bench.console_list                  # 100,000 sagas
    python -m bench.console_list --sagas 1000000  # a million (several minutes to load)

Creates a scratch PostgreSQL database (SAGA_TEST_PG_ADMIN_URL's server), migrates
it, COPYs the sagas in (each with its steps; statuses, ages, keys and inputs
varied), ANALYZEs, serves `saga api`'s app with the console on a free port, logs
in and times each list page (first page with its totals, a status, a key, an
input field, error text, the next pages by cursor) and the overview; then prints
the EXPLAIN ANALYZE of the keyset queries and drops the database. Not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg

ADMIN_URL = os.environ.get(
    "SAGA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
STEPS = ("pack", "record_on_ledger", "ship")
STATUSES = (("completed", 90), ("running", 5), ("compensated", 3), ("failed", 2))


def _database(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def load(url: str, count: int, seed: int = 7) -> None:
    """COPY `count` sagas and their steps in; one transaction."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    weights = [w for _, w in STATUSES]
    names = [s for s, _ in STATUSES]
    sagas, steps = io.StringIO(), io.StringIO()
    for n in range(count):
        saga_id = str(uuid.UUID(int=rng.getrandbits(128)))
        status = rng.choices(names, weights)[0]
        updated = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
        created = updated - timedelta(seconds=rng.uniform(0.5, 30))
        current = {"completed": 3, "compensated": 0}.get(status, rng.randrange(3))
        reason = (
            f"step 'ship' after the pivot failed for good (CarrierDown: timeout {n})"
            if status == "failed"
            else ""
        )
        payload = {"order_id": f"o-{n}", "customer_id": f"c-{n % 5000}", "amount_cents": n % 9000}
        row = [
            saga_id,
            "shipment",
            "1",
            status,
            str(current),
            json.dumps(payload),
            "{}",
            reason or "\\N",
            f"order-{n}",
            "\\N",
            created.isoformat(),
            updated.isoformat(),
        ]
        sagas.write("\t".join(row) + "\n")
        for i, step in enumerate(STEPS):
            done = i < current or status == "completed"
            step_status = (
                "done" if done else ("failed" if status == "failed" and i == current else "pending")
            )
            error = "CarrierDown: timeout" if step_status == "failed" else "\\N"
            kind = "chain" if step == "record_on_ledger" else "local"
            steps.write(
                "\t".join(
                    [
                        saga_id,
                        str(i),
                        step,
                        kind,
                        step_status,
                        "1" if done else "0",
                        "0",
                        "0",
                        "0",
                        error,
                        updated.isoformat(),
                        "\\N",
                    ]
                )
                + "\n"
            )
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY sagas (id, name, version, status, current, input, data, reason, "
            "idempotency_key, payload_hash, created_at, updated_at) FROM STDIN"
        ) as copy:
            copy.write(sagas.getvalue())
        with cur.copy(
            "COPY saga_steps (saga_id, idx, name, kind, status, attempts, failures, "
            "compensation_attempts, compensation_failures, last_error, updated_at, "
            "waiting_since) FROM STDIN"
        ) as copy:
            copy.write(steps.getvalue())
        conn.commit()
        cur.execute("ANALYZE sagas")
        cur.execute("ANALYZE saga_steps")
        conn.commit()


def explain(url: str) -> dict[str, str]:
    """EXPLAIN ANALYZE of the list's statements, as the search builds them."""
    from sqlalchemy import tuple_
    from sqlalchemy.dialects import postgresql

    from saga.adapters.sql import create_engine
    from saga.adapters.sql.saga_search import (
        _SUMMARY,
        Cursor,
        InputField,
        SagaFilter,
        _condition,
        _cursor_tuple,
    )
    from saga.adapters.sql.tables import sagas

    engine = create_engine(url)
    plans: dict[str, str] = {}
    try:
        with engine.connect() as connection:
            newest = connection.execute(
                _SUMMARY.order_by(sagas.c.updated_at.desc(), sagas.c.id.desc()).limit(51)
            ).all()
            cursor = Cursor(newest[-1].updated_at, newest[-1].id)
            key = tuple_(sagas.c.updated_at, sagas.c.id)
            cases = {
                "first page, no filter": (SagaFilter(), None),
                "next page, no filter": (SagaFilter(), cursor),
                "status failed": (SagaFilter(statuses=("failed",)), None),
                "status failed, error text": (
                    SagaFilter(statuses=("failed",), error="timeout"),
                    None,
                ),
            }
            for label, (where, after) in cases.items():
                query = _SUMMARY.where(_condition(connection, where))
                if after is not None:
                    query = query.where(key < _cursor_tuple(after))
                query = query.order_by(sagas.c.updated_at.desc(), sagas.c.id.desc()).limit(51)
                sql = str(
                    query.compile(
                        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
                    )
                )
                rows = connection.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql).all()
                plans[label] = "\n".join(r[0] for r in rows)
            # JSONB literals do not render through SQLAlchemy: the input filter's
            # statement as the search sends it, with its value bound.
            where = _condition(connection, SagaFilter(inputs=(InputField("customer_id", "c-17"),)))
            query = (
                _SUMMARY.where(where)
                .order_by(sagas.c.updated_at.desc(), sagas.c.id.desc())
                .limit(51)
            )
            compiled = query.compile(dialect=connection.dialect)
            sql = str(compiled).replace("%(", "{").replace(")s", "}")
            params = {
                k: ("'" + json.dumps(v).replace("'", "''") + "'::jsonb")
                if isinstance(v, dict)
                else (f"'{v}'" if isinstance(v, str) else str(v))
                for k, v in compiled.params.items()
            }
            rows = connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + sql.format(**params)
            ).all()
            plans["input customer_id=c-17 (GIN index ix_sagas_input)"] = "\n".join(
                r[0] for r in rows
            )
    finally:
        engine.dispose()
    return plans


def timed(client: Any, path: str, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
        "max_ms": round(times[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    from saga.adapters.sql import upgrade
    from saga.bootstrap import Container
    from saga.config import Settings
    from saga.entrypoints.http.app import create_app
    from saga.entrypoints.http.ui import ConsoleServices
    from tests.support.api import Server
    from tests.support.console import API_TOKEN, logged_in

    name = f"saga_bench_console_{os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _database(name)
    try:
        upgrade(url)
        started = time.perf_counter()
        load(url, args.sagas)
        print(f"loaded {args.sagas} sagas in {time.perf_counter() - started:.1f}s")
        settings = Settings(
            database_url=url,
            definitions="tests.support.shipment_saga",
            api_token=API_TOKEN,
            broker_url="amqp://guest:guest@127.0.0.1:5672//",
            step_queue=f"bench.{name}.steps",
            dead_letter_queue=f"bench.{name}.dead-letter",
            log_level="WARNING",
        )
        container = Container(settings)
        app = create_app(
            container.orchestrator(), settings, console=ConsoleServices.from_container(container)
        )
        server = Server(app).start()
        try:
            client = logged_in(server.url, ("", API_TOKEN))
            first = client.get("/ui/sagas")
            first_id = first.text.split('href="/ui/sagas/', 1)[1].split('"', 1)[0]
            after = first.text.split("after=", 1)[1].split('"', 1)[0].replace("&amp;", "&")
            deep = "/ui/sagas"
            for _ in range(20):  # twenty pages in, by cursor
                page = client.get(deep)
                token = page.text.split("after=", 1)[1].split('"', 1)[0]
                deep = f"/ui/sagas?after={token}"
            paths = {
                "first page (count to 10,000)": "/ui/sagas",
                "next page (cursor)": f"/ui/sagas?after={after}",
                "21st page (cursor)": deep,
                "status=failed": "/ui/sagas?status=failed",
                "idempotency key": f"/ui/sagas?key={quote('order-4242')}",
                "input customer_id": f"/ui/sagas?input={quote('customer_id=c-17')}",
                "error text (failed)": "/ui/sagas?status=failed&error=timeout",
                "error text alone": "/ui/sagas?error=timeout",
                "saga page": f"/ui/sagas/{first_id}",
                "overview": "/ui/",
            }
            results = {label: timed(client, path, args.repeat) for label, path in paths.items()}
        finally:
            server.stop()
            container.engine.dispose()
        print(f"\n{args.sagas} sagas, {args.repeat} requests each (ms):")
        for label, r in results.items():
            print(
                f"  {label:28} median {r['median_ms']:7.1f}  p95 {r['p95_ms']:7.1f}  "
                f"max {r['max_ms']:7.1f}"
            )
        for label, plan in explain(url).items():
            print(f"\nEXPLAIN ANALYZE: {label}\n{plan}")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
