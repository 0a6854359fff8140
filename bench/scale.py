"""Benchmark 8: the scale-out curve, and which resource stops it (measured, not guessed).

    python -m bench scale [--quick]

For 1, 2 and 4 `saga worker` processes and 1 and 2 `saga relay` processes (the
product's commands as `saga up --scale worker=N` starts them; each worker with a
prefork pool of one process, so N is the number of processes running steps),
the same N `bench-3` sagas are enqueued at once and timed as benchmark 1 times
them (bench.local.run_ours). While they run, a sampler reads every half second:

* CPU time (utime + stime, /proc/<pid>/stat) of each worker (main process and
  pool child), each relay, this process (it enqueues), the PostgreSQL backends
  connected to the run's database (pg_stat_activity), the server's own processes
  (WAL writer, checkpointer, autovacuum: shared), beam.smp (RabbitMQ, shared),
  and apart, not counted as the stack's, other databases' backends;
* the machine's CPU (/proc/stat: busy, iowait, idle over all cores);
* PostgreSQL commits (pg_stat_database.xact_commit of the run's database);
* the step queue's depth (ready messages) and unpublished outbox rows.

The knee is where doubling the workers adds less than 15 %. The verdict for
each configuration names what is saturated from those figures: the machine's
CPUs (busy over 90 %), and then who holds them, a single process at a full
core (a Python process that cannot use a second one), PostgreSQL's commit rate
against the floor (bench/floor.py, when it ran in the same invocation), or the
queue (messages waiting = the workers are behind; outbox rows waiting = the
relay is).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from bench.common import Stack, retrying, scratch_database
from saga.adapters.rabbitmq.queues import queue_depth
from saga.adapters.sql import create_engine

TICK = os.sysconf("SC_CLK_TCK")
POSTGRES_SERVER = "postgres server processes (WAL writer, checkpointer, ...; shared)"
# Groups measured but not the stack's: left out of its CPU per saga.
NOT_OURS_PREFIX = "not this run: "
CORES = os.cpu_count() or 1


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, seconds (None once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def by_name(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
    return pids


def machine_cpu() -> dict[str, float]:
    """Cumulative seconds over all cores: busy, iowait, idle (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = values[3], values[4]
    steal = values[7] if len(values) > 7 else 0
    busy = sum(values[:8]) - idle - iowait - steal
    return {"busy": busy / TICK, "iowait": iowait / TICK, "idle": idle / TICK}


class Sampler(threading.Thread):
    """CPU per process group, machine CPU, commits and queue depths, sampled in the background."""

    def __init__(
        self,
        groups: Mapping[str, Sequence[int]],
        database_url: str,
        database: str,
        broker_url: str,
        step_queue: str,
        every: float = 0.5,
    ) -> None:
        super().__init__(daemon=True)
        self.roots = {k: list(v) for k, v in groups.items()}
        self.database_url, self.database = database_url, database
        self.broker_url, self.step_queue = broker_url, step_queue
        self.every = every
        self.stop = threading.Event()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.group_of: dict[int, str] = {}
        self.max_core: dict[int, float] = {}
        self.depths: list[int] = []
        self.backlog: list[int] = []
        self.commits: list[tuple[float, int]] = []
        self.cpu0 = machine_cpu()
        self.cpu1 = self.cpu0
        self.t0 = time.monotonic()
        self.t1 = self.t0

    def _pids(self, c: psycopg.Connection[Any]) -> dict[int, str]:
        out: dict[int, str] = {}
        for p in by_name("postgres"):
            out[p] = POSTGRES_SERVER
            with contextlib.suppress(OSError):
                if b"(" in Path(f"/proc/{p}/cmdline").read_bytes():  # a client's backend
                    out[p] = NOT_OURS_PREFIX + "postgres backends of other databases"
        for p in by_name("beam.smp"):
            out[p] = "rabbitmq (beam.smp)"
        rows = c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.database,),
        ).fetchall()
        for (p,) in rows:
            out[int(p)] = "postgres backends of this run"
        for group, roots in self.roots.items():
            for root in roots:
                for p in tree(root):
                    out[p] = group
        # This process alone: the workers and relays are its children, in their groups.
        out[os.getpid()] = "bench process (enqueues, polls)"
        return out

    def sample(self, c: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        previous = dict(self.last)
        for pid, group in self._pids(c).items():
            seconds = cpu_seconds(pid)
            if seconds is None:
                continue
            self.group_of[pid] = group
            self.first.setdefault(pid, seconds)
            self.last[pid] = seconds
            if pid in previous and now > self.t1:
                core = (seconds - previous[pid]) / (now - self.t1)
                self.max_core[pid] = max(self.max_core.get(pid, 0.0), core)
        self.cpu1, self.t1 = machine_cpu(), now
        row = c.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.database,)
        ).fetchone()
        if row is not None:
            self.commits.append((now, int(row[0])))
        backlog = c.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
        self.backlog.append(int(backlog[0]) if backlog else 0)
        depth = queue_depth(self.broker_url, self.step_queue, 2.0)
        if depth is not None:
            self.depths.append(depth)

    def run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as c:
            self.sample(c)
            while not self.stop.wait(self.every):
                with contextlib.suppress(psycopg.Error, OSError):
                    self.sample(c)
            with contextlib.suppress(psycopg.Error, OSError):
                self.sample(c)

    def result(self) -> dict[str, Any]:
        wall = self.t1 - self.t0
        groups: dict[str, float] = {}
        for pid, group in self.group_of.items():
            groups[group] = groups.get(group, 0.0) + self.last[pid] - self.first[pid]
        busy = self.cpu1["busy"] - self.cpu0["busy"]
        iowait = self.cpu1["iowait"] - self.cpu0["iowait"]
        counted = sum(groups.values())
        commits = self.commits[-1][1] - self.commits[0][1] if len(self.commits) > 1 else 0
        hottest = max(self.max_core.items(), key=lambda kv: kv[1], default=(0, 0.0))
        return {
            "seconds": round(wall, 2),
            "machine_busy_fraction": round(busy / (wall * CORES), 3) if wall else None,
            "machine_iowait_fraction": round(iowait / (wall * CORES), 3) if wall else None,
            "cpu_seconds_by_group": {k: round(v, 2) for k, v in sorted(groups.items())},
            "cpu_seconds_others": round(max(0.0, busy - counted), 2),
            "hottest_process": {
                "group": self.group_of.get(hottest[0], "?"),
                "pid": hottest[0],
                "peak_cores": round(hottest[1], 2),
            },
            "pg_commits": commits,
            "pg_commits_per_second": round(commits / wall, 1) if wall else None,
            "step_queue_depth_mean": round(sum(self.depths) / len(self.depths), 1)
            if self.depths
            else None,
            "step_queue_depth_max": max(self.depths, default=None),
            "outbox_backlog_mean": round(sum(self.backlog) / len(self.backlog), 1)
            if self.backlog
            else None,
            "outbox_backlog_max": max(self.backlog, default=None),
        }


def run_point(url: str, engine: Any, n: int, workers: int, relays: int) -> dict[str, Any]:
    from bench.local import run_ours

    stack = Stack(url)
    with stack:
        env = {"SAGA_RELAY_POLL_INTERVAL": str(stack.settings.relay_poll_interval)}
        relay_procs = [
            stack.procs.spawn("relay", ["saga", "relay"], stack.settings, **env)
            for _ in range(relays)
        ]
        command = ["saga", "worker", "--concurrency", "1", "--pool", "prefork"]
        worker_procs = [
            stack.procs.spawn(
                "worker",
                # A node name of its own: Celery's control queue is exclusive per name.
                [
                    *command,
                    "--hostname",
                    f"scale{i + 1}-{stack.settings.step_queue.split('.')[1]}@%h",
                ],
                stack.settings,
                **env,
            )
            for i in range(workers)
        ]
        time.sleep(5)  # workers connect before the clock starts
        if not all(p.alive() for p in stack.procs.started):
            raise RuntimeError(stack.procs.report())
        run_ours(stack, engine, min(50, n), 3)  # warm-up: pools, prepared statements
        sampler = Sampler(
            {
                "workers": [p.pid for p in worker_procs],
                "relays": [p.pid for p in relay_procs],
            },
            url,
            url.rsplit("/", 1)[1],
            stack.settings.broker_url,
            stack.settings.step_queue,
        )
        sampler.start()
        try:
            run = run_ours(stack, engine, n, 3, timeout=max(180.0, n / 2))
        finally:
            sampler.stop.set()
            sampler.join(30)
        usage = sampler.result()
    # The processes' logs are kept only when the point failed (raised above).
    shutil.rmtree(stack.work, ignore_errors=True)
    point = {
        "workers": workers,
        "relays": relays,
        "load1": round(os.getloadavg()[0], 2),
        **{
            k: run[k]
            for k in ("sagas", "statuses", "seconds", "sagas_per_second", "latency_p50_ms")
        },
        **usage,
    }
    per_saga = {
        k: v * 1000 / n
        for k, v in usage["cpu_seconds_by_group"].items()
        if not k.startswith(NOT_OURS_PREFIX)
    }
    point["cpu_ms_per_saga_by_group"] = {k: round(v, 2) for k, v in per_saga.items()}
    # What the stack itself costs per saga, whoever else was running: the rate the
    # cores would allow if the benchmark had them to itself (an upper bound; the
    # server's shared processes count, other databases' backends do not).
    total = sum(per_saga.values())
    point["cpu_ms_per_saga"] = round(total, 2)
    point["cpu_bound_sagas_per_second"] = round(CORES * 1000 / total, 1) if total else None
    return point


def verdict(point: Mapping[str, Any], floor_commits_per_second: float | None) -> str:
    """What bounds this configuration, from its own measurements."""
    busy = point["machine_busy_fraction"] or 0.0
    groups = dict(point["cpu_seconds_by_group"])
    groups["other processes on the machine"] = point["cpu_seconds_others"]
    total = sum(groups.values()) or 1.0
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:3]
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in top)
    hot = point["hottest_process"]
    parts = []
    if busy >= 0.9:
        parts.append(f"CPU: the {CORES} cores are {busy:.0%} busy (of which {shares})")
    else:
        parts.append(f"CPU not saturated ({busy:.0%} busy of {CORES} cores; {shares})")
    ours = point.get("cpu_ms_per_saga_by_group") or {}
    if ours:
        top_ours = sorted(ours.items(), key=lambda kv: -kv[1])[:2]
        parts.append(
            f"the stack's CPU per saga {point['cpu_ms_per_saga']} ms (most: "
            + ", ".join(f"{k} {v} ms" for k, v in top_ours)
            + f") allows {point['cpu_bound_sagas_per_second']} sagas/s on {CORES} free cores"
        )
    if hot["peak_cores"] >= 0.9:
        parts.append(f"one {hot['group']} process peaked at {hot['peak_cores']} of a core")
    if floor_commits_per_second:
        ratio = (point["pg_commits_per_second"] or 0) / floor_commits_per_second
        parts.append(f"PostgreSQL commits at {ratio:.0%} of the pgbench floor")
    if (point["step_queue_depth_mean"] or 0) > 2 * point["workers"]:
        parts.append(f"step queue {point['step_queue_depth_mean']} deep on average: workers behind")
    if (point["outbox_backlog_mean"] or 0) > 50:
        parts.append(
            f"outbox {point['outbox_backlog_mean']} rows unpublished on average: relay behind"
        )
    return "; ".join(parts)


def knee(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for relays in sorted({p["relays"] for p in points}):
        row = sorted((p for p in points if p["relays"] == relays), key=lambda p: p["workers"])
        gains = []
        at = None
        for a, b in itertools.pairwise(row):
            gain = b["sagas_per_second"] / a["sagas_per_second"]
            gains.append({"from": a["workers"], "to": b["workers"], "gain": round(gain, 2)})
            if at is None and gain < 1.15:
                at = a["workers"]
        out[f"{relays} relay(s)"] = {
            "gains": gains,
            # None: every doubling measured still added 15 % or more.
            "knee_at_workers": at,
            "flat_from_the_start": at == row[0]["workers"],
        }
    return out


def bench_scale(
    n: int,
    workers: Sequence[int] = (1, 2, 4),
    relays: Sequence[int] = (1, 2),
    floor_commits_per_second: float | None = None,
) -> dict[str, Any]:
    points = []
    with scratch_database("bench_scale") as url:
        engine = create_engine(url)
        try:
            for r in relays:
                for w in workers:
                    point = retrying(partial(run_point, url, engine, n, w, r))
                    point["verdict"] = verdict(point, floor_commits_per_second)
                    print(
                        f"  scale: {w} worker(s), {r} relay(s): {point['sagas_per_second']}"
                        f" sagas/s (load {point['load1']}); {point['verdict']}",
                        flush=True,
                    )
                    points.append(point)
        finally:
            engine.dispose()
    best = max(points, key=lambda p: p["sagas_per_second"])
    return {
        "cores": CORES,
        "note": (
            f"{CORES} cores shared by the workers, relays, PostgreSQL, RabbitMQ, this process "
            "and anything else running: more processes than cores only help while some of "
            "them wait (for PostgreSQL or the broker)"
        ),
        "worker_processes": "saga worker --concurrency 1, N copies (saga up --scale worker=N)",
        "points": points,
        "knee": knee(points),
        "best": {k: best[k] for k in ("workers", "relays", "sagas_per_second", "verdict")},
    }
