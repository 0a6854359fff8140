"""The naive chain baseline: one Celery task that endorses, submits and waits for the
commit inline, then records the payment in PostgreSQL (what a team writes today).

Default Celery settings, as bench/naive_app.py (early acks, prefetch multiplier 4, no
publisher confirms, a classic durable queue); one blocking Gateway client per worker
process, opened at its first task (never shared across the fork). Configured by
BENCH_NAIVE_BROKER, BENCH_NAIVE_DB, BENCH_NAIVE_QUEUE and BENCH_FABRIC_PROFILE,
BENCH_FABRIC_MSP_DIR, BENCH_FABRIC_CHANNEL.

    celery -A bench.naive_chain_app worker --concurrency 2
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from celery import Celery
from sqlalchemy import Engine, create_engine, func, insert

from saga.adapters.fabric import GatewayClient, SigningIdentity, load_connection_profile
from saga.examples.order_payment_tables import order_payment_events

app = Celery(
    "naive-chain", broker=os.environ.get("BENCH_NAIVE_BROKER", "amqp://guest:guest@127.0.0.1//")
)
app.conf.task_default_queue = os.environ.get("BENCH_NAIVE_QUEUE", "bench.naive-chain")
app.conf.task_ignore_result = True

_lock = threading.Lock()
_engine: Engine | None = None
_client: GatewayClient | None = None


def engine() -> Engine:
    global _engine
    with _lock:
        if _engine is None:
            url = os.environ["BENCH_NAIVE_DB"].replace("postgresql://", "postgresql+psycopg://", 1)
            _engine = create_engine(url)
        return _engine


def client() -> GatewayClient:
    global _client
    with _lock:
        if _client is None:
            profile = load_connection_profile(Path(os.environ["BENCH_FABRIC_PROFILE"]))
            identity = SigningIdentity.from_msp_dir(
                profile.msp_id, Path(os.environ["BENCH_FABRIC_MSP_DIR"])
            )
            _client = GatewayClient.connect(profile.endpoint(), identity)
        return _client


@app.task(name="naive.chain_step")
def chain_step(saga_id: str, order_id: str, amount: int) -> str:
    gateway = client()
    channel = os.environ.get("BENCH_FABRIC_CHANNEL", "mychannel")
    prepared = gateway.prepare(
        channel,
        "sagafacts",
        "RecordPayment",
        [f"naive/{saga_id}", order_id, str(amount), "EUR", "bench"],
    )
    gateway.submit(prepared)
    # The worker process waits here for the block that holds the transaction.
    result = gateway.commit_status(channel, prepared.txid, timeout=120)
    with engine().begin() as c:
        c.execute(
            insert(order_payment_events).values(
                saga_id=saga_id,
                order_id=order_id,
                step="chain",
                action="valid" if result.valid else f"invalid:{result.code}",
                amount_cents=amount,
                created_at=func.clock_timestamp(),
            )
        )
    return saga_id
