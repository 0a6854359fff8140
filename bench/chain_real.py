"""Chain sagas on REAL Fabric 2.5, against the same network's plain-client commit rate
and against the naive inline-commit Celery task (issue 14 item 3).

    python -m bench chain-real [--quick] [--batch-timeouts 2,0.25] [--in-flight-batch-timeout 90]

For each BatchTimeout, one real network (tools/saga_fabricnet: official 2.5 binaries,
three etcdraft orderers, peer0.org1 + peer0.org2, sagafacts as a service, MAJORITY
endorsement, MaxMessageCount `--block-size`), and on it, one after the other:

1. plain client: `--sagas` RecordPayment transactions as fast as they go: endorsed on a
   thread pool (the blocking GatewayClient), submitted and awaited on the asyncio
   client (AsyncGatewayClient), all in flight at once. Committed tx/s = VALID
   transactions / (last commit - first endorse).
2. naive: the same number as tasks of bench/naive_chain_app.py (endorse, submit, wait
   for the commit inline, INSERT a row), one `celery worker` with its default prefork
   pool of 2. Sagas/s = n / (last INSERT - first publish).
3. ours: `--sagas` `bench-chain` sagas (one chain step) enqueued inside the clock by
   8 threads (`orch.enqueue`, one Orchestrator: the many request handlers of a
   service; each enqueue is its own unit of work), through relay, `saga
   chain-executor` (SAGA_CHAIN_IN_FLIGHT `--executor-in-flight`), `saga watcher`, and
   one `saga worker` (idle: no local steps). Sagas/s = sagas / (last terminal - first
   enqueue). One enqueueing thread would cap the rate at what it enqueues (~40/s
   here) while the plain client has all its work at once.

Then, on a network of its own, `in_flight` sagas (1,000) enqueued before the processes
start: BatchTimeout `in_flight_batch_timeout` (90 s), so that no block is cut while
the executor submits, MaxMessageCount at least the saga count and PreferredMaxBytes
32 MB, so that neither count nor size cuts one (at Fabric's sample 512 KB the orderer
cuts a block every ~150 chain transactions of 3-4 KB whatever MaxMessageCount says,
and with blocks every 2 s Little's law bounds what is in flight to throughput x block
time). Figures: the most chain transactions prepared or submitted and not yet known
committed at one moment (ledger_attempts rows with state != committed, sampled every
0.1 s), how many were so at the first commit and how many the first block holds, and
the longest chain step task against the block time (no task waits for a block). Its
re-check delay and the watcher's commit-wait deadline are the BatchTimeout + 30 s, so
that no step is verified while the orderer still holds its transaction in the batch:
a verify pass finds a transaction older than the step's timeout (30 s for
`bench-chain`) in doubt and fails the attempt. The watcher keeps 300 commit waits
open (400 by default) so that with the executor's 100 threads it stays under the
peer's 500 gateway calls.

CPU seconds per process (utime + stime from /proc/<pid>/stat, over each run) name what
bounds a run; PostgreSQL and RabbitMQ are shared with anything else on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from bench.common import (
    AMQP_URL,
    Stack,
    delete_queue,
    percentile,
    retrying,
    scratch_database,
    timing_records,
)
from bench.local import TERMINAL
from saga.adapters.fabric import (
    AsyncGatewayClient,
    GatewayClient,
    SigningIdentity,
    load_connection_profile,
)
from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import ledger_attempts, sagas
from saga.app.orchestrator import Orchestrator
from saga.examples.order_payment_tables import order_payment_events
from saga.registry_loader import load_registry
from saga_fabricnet import FabricNetwork, NetworkOptions
from tests.support.fabricnet import fabric_release

CHAINCODE = "sagafacts"
_TICK = os.sysconf("SC_CLK_TCK")


# -- CPU per process ---------------------------------------------------------------


def _proc_cpu() -> dict[int, tuple[str, float, int, int]]:
    """pid -> (cmdline head, CPU seconds so far, process group, start time in ticks)."""
    out: dict[int, tuple[str, float, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # Fields after the command: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
        # ... starttime(19), which tells a reused pid from the process seen before.
        out[int(entry.name)] = (
            cmd.strip()[:160],
            (int(fields[11]) + int(fields[12])) / _TICK,
            int(fields[2]),
            int(fields[19]),
        )
    return out


def _label(cmd: str) -> str | None:
    words = cmd.split()
    if not words:
        return None
    head = Path(words[0]).name
    if head in ("peer", "orderer"):
        return "other Fabric nodes on the machine (not this network)"
    if head.startswith("postgres"):
        return "postgresql (shared)"
    if head == "beam.smp":
        return "rabbitmq (shared)"
    return None


class CpuMeter:
    """CPU seconds per labelled process between start() and stop().

    `ours` maps process groups to labels (the bench's own children: saga processes,
    the naive worker); Fabric's peers and orderers are those of `network`; PostgreSQL
    and RabbitMQ every such process on the machine (they are shared)."""

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}
        self.pids: dict[int, str] = {}
        self._before: dict[int, tuple[str, float, int, int]] = {}
        self.started = 0.0

    def start(self) -> None:
        self._before = _proc_cpu()
        self.started = time.monotonic()

    def stop(self) -> dict[str, Any]:
        after = _proc_cpu()
        wall = time.monotonic() - self.started
        used: dict[str, float] = {}
        for pid, (cmd, cpu, group, born) in after.items():
            label = self.pids.get(pid) or self.groups.get(group) or _label(cmd)
            if label is None:
                continue
            before = self._before.get(pid)
            # A process started during the run counts from zero (PostgreSQL backends
            # rewrite their command line, so the start time is the identity).
            spent = cpu - (before[1] if before and before[3] == born else 0.0)
            used[label] = used.get(label, 0.0) + spent
        own = os.getpid()
        if own in after:
            used["bench process (enqueue, clients)"] = (
                after[own][1] - self._before.get(own, ("", 0.0, 0, 0))[1]
            )
        total = _machine_busy()
        return {
            "wall_s": round(wall, 2),
            "cpu_s": {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1])},
            "cores_busy": {
                k: round(v / wall, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1])
            },
            "machine_cpu_busy_fraction": round(total, 3),
            "loadavg": _loadavg(),
        }


def _machine_busy() -> float:
    """Fraction of the machine's CPU time busy over half a second (/proc/stat)."""

    def read() -> tuple[float, float]:
        parts = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = parts[3] + parts[4]
        return sum(parts), idle

    t0, i0 = read()
    time.sleep(0.5)
    t1, i1 = read()
    return 1 - (i1 - i0) / max(t1 - t0, 1e-9)


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


# -- the network --------------------------------------------------------------------


@contextlib.contextmanager
def real_network(
    batch_timeout: float, block_size: int, preferred_max_bytes: str = "512 KB"
) -> Iterator[FabricNetwork]:
    work = Path(tempfile.mkdtemp(prefix="bench_chain_real."))
    release = fabric_release()
    network = FabricNetwork(
        work / "net",
        release,
        NetworkOptions(
            batch_timeout=batch_timeout,
            max_message_count=block_size,
            preferred_max_bytes=preferred_max_bytes,
        ),
    )
    try:
        started = time.monotonic()
        network.up()
        print(
            f"  network up in {time.monotonic() - started:.0f}s (BatchTimeout {batch_timeout}s,"
            f" MaxMessageCount {block_size}, PreferredMaxBytes {preferred_max_bytes})",
            flush=True,
        )
        yield network
    finally:
        network.down()


def _fabric_pids(network: FabricNetwork) -> dict[int, str]:
    out = {}
    for member in network.members:
        pid = network.processes.pid(member)
        if pid is not None:
            kind = (
                "orderer"
                if member.startswith("orderer")
                else ("peer" if member.startswith("peer") else member)
            )
            out[pid] = f"fabric {kind}"
    return out


def _meter(network: FabricNetwork) -> CpuMeter:
    meter = CpuMeter()
    meter.pids.update(_fabric_pids(network))
    return meter


# -- 1. plain client ----------------------------------------------------------------


# Gateway calls a client keeps open at once: below the peer's own limit
# (peer.limits.concurrency.gatewayService, 500 in Fabric's core.yaml), as the watcher's.
PLAIN_MAX_IN_FLIGHT = 400


def plain_client(network: FabricNetwork, n: int, endorse_threads: int = 32) -> dict[str, Any]:
    profile = load_connection_profile(network.profile(1))
    identity = SigningIdentity.from_msp_dir(profile.msp_id, network.msp_dir(1))
    channel = network.channel
    run = uuid.uuid4().hex[:6]
    sync = GatewayClient.connect(profile.endpoint(), identity)
    meter = _meter(network)

    async def main() -> tuple[int, float, float]:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(endorse_threads)
        client = AsyncGatewayClient.connect(
            profile.endpoint(), identity, max_in_flight=PLAIN_MAX_IN_FLIGHT
        )
        ends: list[float] = []
        valid = 0

        async def one(i: int) -> None:
            nonlocal valid
            prepared = await loop.run_in_executor(
                pool,
                partial(
                    sync.prepare,
                    channel,
                    CHAINCODE,
                    "RecordPayment",
                    [f"plain-{run}-{i}", f"o-{i}", "100", "EUR", "bench"],
                ),
            )
            await client.submit(prepared)
            result = await client.commit_status(channel, prepared.txid, timeout=300)
            valid += int(result.valid)
            ends.append(time.time())

        start = time.time()
        async with client:
            await asyncio.gather(*(one(i) for i in range(n)))
        pool.shutdown()
        return valid, start, max(ends)

    meter.start()
    try:
        valid, start, end = asyncio.run(main())
    finally:
        sync.close()
    cpu = meter.stop()
    return {
        "transactions": n,
        "valid": valid,
        "seconds": round(end - start, 2),
        "committed_tx_per_second": round(valid / (end - start), 1),
        "endorse_threads": endorse_threads,
        "cpu": cpu,
    }


# -- 2. naive inline-commit Celery task ---------------------------------------------


def naive_inline(network: FabricNetwork, database_url: str, n: int, work: Path) -> dict[str, Any]:
    import importlib
    import subprocess
    import sys

    queue = f"bench.naive-chain.{uuid.uuid4().hex[:8]}"
    env_vars = {
        "BENCH_NAIVE_BROKER": AMQP_URL,
        "BENCH_NAIVE_DB": database_url,
        "BENCH_NAIVE_QUEUE": queue,
        "BENCH_FABRIC_PROFILE": str(network.profile(1)),
        "BENCH_FABRIC_MSP_DIR": str(network.msp_dir(1)),
        "BENCH_FABRIC_CHANNEL": network.channel,
    }
    os.environ.update(env_vars)
    import bench.naive_chain_app as naive

    naive = importlib.reload(naive)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env.update(env_vars)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    log = (work / "naive-chain-worker.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.naive_chain_app",
            "worker",
            "--concurrency=2",
            "--pool=prefork",
            "--loglevel=WARNING",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    engine = create_engine(database_url)
    meter = _meter(network)
    meter.groups[proc.pid] = "naive celery worker (main + 2 pool processes)"
    try:
        time.sleep(5)  # connects and declares its queue
        run = uuid.uuid4().hex[:6]
        like = f"naive-chain-{run}-%"
        meter.start()
        started = time.time()
        with naive.app.connection_for_write() as conn:
            for i in range(n):
                naive.chain_step.apply_async(
                    (str(uuid.uuid4()), f"naive-chain-{run}-{i}", 100 + i), connection=conn
                )

        def done() -> int:
            with engine.connect() as c:
                return int(
                    c.execute(
                        select(func.count()).where(order_payment_events.c.order_id.like(like))
                    ).scalar_one()
                )

        deadline = time.monotonic() + 3600
        while done() < n:
            if proc.poll() is not None:
                raise RuntimeError(f"naive worker exited; see {work / 'naive-chain-worker.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("naive chain run did not finish within an hour")
            time.sleep(0.5)
        cpu = meter.stop()
        with engine.connect() as c:
            rows = c.execute(
                select(order_payment_events.c.created_at, order_payment_events.c.action).where(
                    order_payment_events.c.order_id.like(like)
                )
            ).all()
        wall = max(r.created_at.timestamp() for r in rows) - started
        return {
            "sagas": n,
            "valid": sum(1 for r in rows if r.action == "valid"),
            "seconds": round(wall, 2),
            "sagas_per_second": round(n / wall, 1),
            "worker": "celery prefork, concurrency 2 (Celery's default on this 2-CPU machine)",
            "cpu": cpu,
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except Exception:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        engine.dispose()
        log.close()
        delete_queue(queue)


# -- 3. ours ------------------------------------------------------------------------


@contextlib.contextmanager
def _dropped(queue: str) -> Iterator[None]:
    try:
        yield
    finally:
        delete_queue(queue)


def _sample_in_flight(engine: Engine, stop: threading.Event, seen: list[tuple[float, int]]) -> None:
    """(time, chain transactions prepared or submitted and not yet known committed).

    An attempt is prepared, submitted or committed (AttemptState); != committed is
    the predicate of the table's partial index of unsettled attempts."""
    while not stop.is_set():
        with contextlib.suppress(Exception), engine.connect() as c:
            count = c.execute(
                select(func.count())
                .select_from(ledger_attempts)
                .where(ledger_attempts.c.state != "committed")
            ).scalar_one()
            seen.append((time.time(), int(count)))
        stop.wait(0.1)


def _blocks(engine: Engine, seen: list[tuple[float, int]]) -> dict[str, Any]:
    """The blocks the run's chain transactions went into, and what was in flight when
    the first of them was known committed (the last sample before that)."""
    with engine.connect() as c:
        per_block = c.execute(
            select(ledger_attempts.c.block, func.count())
            .where(ledger_attempts.c.block.is_not(None))
            .group_by(ledger_attempts.c.block)
            .order_by(ledger_attempts.c.block)
        ).all()
        first_commit = c.execute(select(func.min(ledger_attempts.c.committed_at))).scalar_one()
    before = [count for at, count in seen if at <= first_commit.timestamp()] if first_commit else []
    return {
        "blocks": len(per_block),
        "tx_per_block": [int(count) for _, count in per_block][:20],
        "first_block_tx": int(per_block[0][1]) if per_block else 0,
        "in_flight_at_first_commit": before[-1] if before else None,
    }


def ours(
    network: FabricNetwork,
    n: int,
    batch_timeout: float,
    *,
    executor_in_flight: int,
    recheck_delay: float = 30.0,
    preload: bool = False,
    enqueue_threads: int = 8,
    watcher_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """`preload`: every saga is enqueued before the processes start, and the clock
    starts with them: the relay then hands the executor all n at once. Otherwise the
    enqueue is inside the clock, from `enqueue_threads` threads sharing one
    Orchestrator (a service's request handlers): one transaction per saga, each its
    own unit of work, so the threads share nothing but the engine's pool."""
    chain_queue = f"bench.{uuid.uuid4().hex[:8]}.chain"
    with scratch_database("bench_chain_real") as url, _dropped(chain_queue):
        extra = {
            "fabric_profile": str(network.profile(1)),
            "fabric_msp_dir": str(network.msp_dir(1)),
            "fabric_channel": network.channel,
            "chain_recheck_delay": recheck_delay,
            "chain_in_flight": executor_in_flight,
            "db_pool_size": 10,
            "db_max_overflow": 10,
            "chain_queue": chain_queue,
        }
        # A connection per enqueueing thread, one for the sampler and one for the polls.
        engine = create_engine(url, pool_size=enqueue_threads + 2, max_overflow=5)
        with Stack(url, relay_poll_interval=0.05, extra=extra) as stack:
            meter = _meter(network)
            orch = Orchestrator(load_registry("bench.sagas"), SqlUnitOfWorkFactory(engine))

            def enqueue_one(i: int) -> str:
                payload = {"order_id": f"c-{i}", "amount_cents": 100 + i}
                # retrying keeps no state between calls: each thread retries its own.
                return retrying(partial(orch.enqueue, "bench-chain", payload)).saga_id

            def enqueue_all() -> list[str]:
                with ThreadPoolExecutor(enqueue_threads, thread_name_prefix="enqueue") as pool:
                    return list(pool.map(enqueue_one, range(n)))

            def spawn() -> None:
                relay = stack.relay()
                watcher = stack.spawn(
                    "watcher",
                    ["bench._hooked", "watcher", "--status-interval", "10", *watcher_args],
                )
                executor = stack.spawn("chain-executor", ["bench._hooked", "chain-executor"])
                worker = stack.worker(concurrency=1)
                for proc, label in (
                    (relay, "saga relay"),
                    (watcher, "saga watcher"),
                    (executor, "saga chain-executor"),
                    (worker, "saga worker (idle: no local steps)"),
                ):
                    assert proc.popen is not None
                    meter.groups[proc.popen.pid] = label

            stop = threading.Event()
            seen: list[tuple[float, int]] = []
            sampler = threading.Thread(target=_sample_in_flight, args=(engine, stop, seen))
            if preload:
                before = time.time()
                ids = enqueue_all()
                enqueued = time.time() - before
                meter.start()
                sampler.start()
                started = time.time()
                spawn()
            else:
                spawn()
                time.sleep(6)
                meter.start()
                sampler.start()
                started = time.time()
                ids = enqueue_all()
                enqueued = time.time() - started
            deadline = time.monotonic() + 3600
            try:
                while True:
                    with engine.connect() as c:
                        done = c.execute(
                            select(func.count()).where(sagas.c.status.in_(TERMINAL))
                        ).scalar_one()
                    if done >= n:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{done}/{n} sagas terminal after an hour")
                    if not all(p.alive() for p in stack.procs.started):
                        raise RuntimeError(stack.procs.report())
                    time.sleep(0.5)
            finally:
                stop.set()
                sampler.join()
            cpu = meter.stop()
            with engine.connect() as c:
                rows = c.execute(select(sagas.c.status, sagas.c.updated_at)).all()
            blocks = _blocks(engine, seen)
            time.sleep(1.5)
            records = [r for r in timing_records(stack.timing_dir) if r["saga_id"] in set(ids)]
        engine.dispose()
    end = max(r.updated_at.timestamp() for r in rows)
    wall = end - started
    completed = sum(1 for r in rows if r.status == "completed")
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    durations = [r["post"] - r["pre"] for r in records]
    return {
        "sagas": n,
        "completed": completed,
        "statuses": statuses,
        "seconds": round(wall, 2),
        "enqueue_seconds": round(enqueued, 2),
        "sagas_per_second": round(completed / wall, 1),
        "executor_in_flight_setting": executor_in_flight,
        "recheck_delay_s": recheck_delay,
        "enqueue_threads": enqueue_threads,
        "watcher_args": list(watcher_args),
        "preloaded": preload,
        "clock": "from the processes' start (all enqueued before)"
        if preload
        else "from the first enqueue (enqueue inside the clock)",
        "max_chain_tx_in_flight": max((count for _, count in seen), default=0),
        **blocks,
        "tasks": len(records),
        "task_ms_p50": round((percentile(durations, 50) or 0) * 1000, 1),
        "task_ms_p99": round((percentile(durations, 99) or 0) * 1000, 1),
        "task_ms_max": round(max(durations, default=0) * 1000, 1),
        "block_time_s": batch_timeout,
        "longest_task_vs_block_time": round(max(durations, default=0) / batch_timeout, 2),
        "cpu": cpu,
    }


# -- the whole benchmark ------------------------------------------------------------


def bench_chain_real(
    n: int,
    batch_timeouts: list[float],
    *,
    block_size: int = 500,
    in_flight: int = 1000,
    in_flight_batch_timeout: float = 90.0,
    in_flight_block_size: int = 2000,
    in_flight_preferred_max_bytes: str = "32 MB",
    executor_in_flight: int = 100,
    naive_n: int = 200,
) -> dict[str, Any]:
    out: dict[str, Any] = {"block_size": block_size, "runs": {}}
    work = Path(tempfile.mkdtemp(prefix="bench_chain_real."))
    for batch_timeout in batch_timeouts:
        with real_network(batch_timeout, block_size) as network:
            run: dict[str, Any] = {"batch_timeout_s": batch_timeout}
            run["plain_client"] = plain_client(network, n)
            print(f"  plain client: {_brief(run['plain_client'])}", flush=True)
            with scratch_database("bench_naive_chain") as url:
                run["naive_inline"] = naive_inline(network, url, naive_n, work)
            print(f"  naive inline: {_brief(run['naive_inline'])}", flush=True)
            run["ours"] = ours(network, n, batch_timeout, executor_in_flight=executor_in_flight)
            print(f"  ours: {_brief(run['ours'])}", flush=True)
            plain_rate = run["plain_client"]["committed_tx_per_second"]
            run["ratio_vs_plain_client"] = round(run["ours"]["sagas_per_second"] / plain_rate, 2)
            run["ratio_vs_naive"] = round(
                run["ours"]["sagas_per_second"] / run["naive_inline"]["sagas_per_second"], 2
            )
            out["runs"][str(batch_timeout)] = run
    if in_flight:
        # Neither count nor size may cut a block before time does.
        block = max(in_flight_block_size, in_flight)
        with real_network(in_flight_batch_timeout, block, in_flight_preferred_max_bytes) as net:
            result = ours(
                net,
                in_flight,
                in_flight_batch_timeout,
                executor_in_flight=executor_in_flight,
                recheck_delay=in_flight_batch_timeout + 30,
                preload=True,
                # A commit wait that outlives no block (the watcher's default, 30 s,
                # re-drove every step to a verify pass that found it older than its
                # 30 s step timeout and failed it in doubt); waits that leave room
                # under the peer's 500 gateway calls for the executor's 100 threads.
                watcher_args=(
                    "--wait-timeout",
                    str(in_flight_batch_timeout + 30),
                    "--max-in-flight",
                    "300",
                ),
            )
        out["in_flight"] = {
            "batch_timeout_s": in_flight_batch_timeout,
            "max_message_count": block,
            "preferred_max_bytes": in_flight_preferred_max_bytes,
            **result,
        }
        print(f"  in flight: {_brief(out['in_flight'])}", flush=True)
    return out


def _brief(result: dict[str, Any]) -> str:
    return str({k: v for k, v in result.items() if k != "cpu"} | {"cpu_s": result["cpu"]["cpu_s"]})
