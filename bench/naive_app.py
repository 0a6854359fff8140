"""The naive baseline: a Celery chain of three tasks, each one PostgreSQL write.

Default Celery settings (early acks, prefetch multiplier 4, no publisher
confirms, a classic durable queue), a module-level SQLAlchemy engine per
worker process (pooled, as a plain Celery app would have), the same table and
row as the saga steps write. Configured by BENCH_NAIVE_BROKER, BENCH_NAIVE_DB,
BENCH_NAIVE_QUEUE.

    celery -A bench.naive_app worker --concurrency 2
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from sqlalchemy import Engine, create_engine, func, insert

from saga.examples.order_payment_tables import order_payment_events

app = Celery("naive", broker=os.environ.get("BENCH_NAIVE_BROKER", "amqp://guest:guest@127.0.0.1//"))
app.conf.task_default_queue = os.environ.get("BENCH_NAIVE_QUEUE", "bench.naive")
app.conf.task_ignore_result = True

_engine: Engine | None = None


def engine() -> Engine:
    global _engine
    if _engine is None:
        url = os.environ["BENCH_NAIVE_DB"].replace("postgresql://", "postgresql+psycopg://", 1)
        _engine = create_engine(url)
    return _engine


def _write(saga_id: str, order_id: str, step: str, amount: int) -> None:
    with engine().begin() as c:
        c.execute(
            insert(order_payment_events).values(
                saga_id=saga_id,
                order_id=order_id,
                step=step,
                action="write",
                amount_cents=amount,
                created_at=func.clock_timestamp(),
            )
        )


@app.task(name="naive.step")
def step(previous: Any, saga_id: str, order_id: str, name: str, amount: int) -> str:
    _write(saga_id, order_id, name, amount)
    return saga_id
