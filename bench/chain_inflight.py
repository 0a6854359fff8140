"""Benchmark 3: chain steps in flight, against the devnet's own commit rate.

    python -m bench chain [--sagas 1000] [--block-seconds 2] [--block-size 500]

One devnet (blocks cut every `--block-seconds` or at `--block-size` txs) with
the sagafacts chaincode, in this run:

1. baseline: the devnet alone. A plain Gateway client pushes `--sagas`
   RecordPayment transactions as fast as it can: endorsement on a thread pool
   (the sync GatewayClient), Submit and CommitStatus on an AsyncGatewayClient.
   Committed tx/s = VALID transactions / (last commit - first endorse).
2. ours: `--sagas` `bench-chain` sagas (one chain step each, bench/sagas.py)
   enqueued at once, through relay, RabbitMQ, one `saga worker` with a prefork
   pool of 2 and one `saga watcher`. Sagas/s = sagas / (last terminal - first
   enqueue). Worker utilisation = busy time (task start to end, bench hook) /
   (wall x 2 processes); the task times show whether a task ever waits for a block.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.common import percentile, retrying, scratch_database, timing_records
from bench.local import TERMINAL, Stack
from saga.adapters.fabric import (
    AsyncGatewayClient,
    GatewayClient,
    SigningIdentity,
    load_connection_profile,
)
from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import sagas
from saga.app.orchestrator import Orchestrator
from saga.registry_loader import load_registry
from saga_devnet.chaincode_launcher import start_chaincode
from tests.support.devnet import Devnet
from tests.support.ledger import CHAINCODE, CHAINCODE_ID
from tests.support.ports import free_port


def _devnet_alone(devnet: Devnet, msp_dir: Path, n: int) -> dict[str, Any]:
    profile = load_connection_profile(devnet.profile(1))
    identity = SigningIdentity.from_msp_dir(profile.msp_id, msp_dir)
    channel = str(devnet.config["channel"])
    run = uuid.uuid4().hex[:6]
    sync = GatewayClient.connect(profile.endpoint(), identity)

    async def main() -> tuple[int, float, float]:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(8)
        client = AsyncGatewayClient.connect(profile.endpoint(), identity)
        ends: list[float] = []
        valid = 0

        async def one(i: int) -> None:
            nonlocal valid
            prepared = await loop.run_in_executor(
                pool,
                lambda: sync.prepare(
                    channel,
                    CHAINCODE,
                    "RecordPayment",
                    [f"base-{run}-{i}", f"o-{i}", "100", "EUR", "bench"],
                ),
            )
            await client.submit(prepared)
            result = await client.commit_status(channel, prepared.txid, timeout=120)
            valid += int(result.valid)
            ends.append(time.time())

        start = time.time()
        async with client:
            await asyncio.gather(*(one(i) for i in range(n)))
        pool.shutdown()
        return valid, start, max(ends)

    try:
        valid, start, end = asyncio.run(main())
    finally:
        sync.close()
    return {
        "transactions": n,
        "valid": valid,
        "seconds": round(end - start, 2),
        "committed_tx_per_second": round(valid / (end - start), 1),
    }


def bench_chain(
    n: int,
    block_seconds: float,
    block_size: int,
    timeout: float = 1800,
    recheck_delay: float = 10.0,
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench_chain."))
    cc_address = f"127.0.0.1:{free_port()}"
    chaincode = start_chaincode(cc_address, CHAINCODE_ID, work / "chaincode.log")
    devnet = Devnet(
        work / "devnet",
        {
            "batch_timeout": block_seconds,
            "max_message_count": block_size,
            "chaincodes": {
                CHAINCODE: {
                    "address": cc_address,
                    "package_id": CHAINCODE_ID,
                    "policy": "MAJORITY Endorsement",
                }
            },
        },
    )
    try:
        devnet.start()
        domain = devnet.org(1)["domain"]
        msp_dir = devnet.org_dir(1) / "users" / f"User1@{domain}" / "msp"
        baseline = _devnet_alone(devnet, msp_dir, n)
        print(f"  devnet alone: {baseline}", flush=True)
        with scratch_database("bench_chain") as url:
            extra = {
                "fabric_profile": str(devnet.profile(1)),
                "fabric_msp_dir": str(msp_dir),
                "fabric_channel": str(devnet.config["channel"]),
                "chain_recheck_delay": recheck_delay,
            }
            engine = create_engine(url)
            with Stack(url, relay_poll_interval=0.05, extra=extra) as stack:
                stack.relay()
                stack.spawn("watcher", ["saga", "watcher", "--status-interval", "10"])
                stack.worker(concurrency=2)
                time.sleep(5)
                orch = Orchestrator(load_registry("bench.sagas"), SqlUnitOfWorkFactory(engine))
                started = time.time()
                ids = [
                    retrying(
                        partial(
                            orch.enqueue,
                            "bench-chain",
                            {"order_id": f"c-{i}", "amount_cents": 100 + i},
                        )
                    ).saga_id
                    for i in range(n)
                ]
                enqueued = time.time() - started
                deadline = time.monotonic() + timeout
                while True:
                    with engine.connect() as c:
                        done = c.execute(
                            select(func.count()).where(sagas.c.status.in_(TERMINAL))
                        ).scalar_one()
                    if done >= n or time.monotonic() > deadline:
                        break
                    if not all(p.alive() for p in stack.procs.started):
                        raise RuntimeError(stack.procs.report())
                    time.sleep(0.5)
                with engine.connect() as c:
                    rows = c.execute(select(sagas.c.status, sagas.c.updated_at)).all()
                time.sleep(1.5)
                records = [r for r in timing_records(stack.timing_dir) if r["saga_id"] in set(ids)]
            engine.dispose()
        end = max(r.updated_at.timestamp() for r in rows)
        wall = end - started
        completed = sum(1 for r in rows if r.status == "completed")
        busy: dict[int, float] = {}
        for r in records:
            busy[r["pid"]] = busy.get(r["pid"], 0.0) + r["post"] - r["pre"]
        durations = [r["post"] - r["pre"] for r in records]
        by_saga: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_saga.setdefault(r["saga_id"], []).append(r)
        first_done, settle = [], []
        for rs in by_saga.values():
            rs.sort(key=lambda r: r["pre"])
            first_done.append(rs[0]["post"] - started)
            settle.append(rs[-1]["post"] - rs[0]["post"])
        outcomes = Counter(str(r["outcome"]) for r in records)
        ours = {
            "sagas": n,
            "completed": completed,
            "seconds": round(wall, 2),
            "enqueue_seconds": round(enqueued, 2),
            "sagas_per_second": round(completed / wall, 1),
            "tasks": len(records),
            "tasks_per_saga": round(len(records) / n, 2),
            "worker_utilisation": {str(pid): round(b / wall, 2) for pid, b in busy.items()},
            "worker_utilisation_mean": round(sum(busy.values()) / (2 * wall), 2),
            "task_ms_p50": round((percentile(durations, 50) or 0) * 1000, 1),
            "task_ms_p99": round((percentile(durations, 99) or 0) * 1000, 1),
            "task_ms_max": round(max(durations, default=0) * 1000, 1),
            "longest_task_vs_block_time": round(max(durations, default=0) / block_seconds, 2),
            "outcomes": dict(outcomes),
            "all_submitted_after_s": round(max(first_done, default=0), 1),
            "submit_to_last_task_p50_s": round(percentile(settle, 50) or 0, 2),
            "submit_to_last_task_p99_s": round(percentile(settle, 99) or 0, 2),
        }
        return {
            "block_seconds": block_seconds,
            "block_size": block_size,
            "chain_recheck_delay": recheck_delay,
            "devnet_alone": baseline,
            "ours": ours,
            "ratio": round(ours["sagas_per_second"] / baseline["committed_tx_per_second"], 2),
        }
    finally:
        try:
            devnet.stop()
        except Exception:
            devnet.kill()
        chaincode.terminate()
        chaincode.wait(10)
