"""The pure parts of bench/floor.py and bench/scale.py: the captured statements turned
into a pgbench script, and the knee and verdict read from a run's measurements."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bench.floor import Transaction, fractions, pgbench_script
from bench.scale import knee, verdict

SAGA = "44eba63e-1c31-4cf6-b6a0-ae13a460995b"
MESSAGE = "34d44811-dc90-4fc1-9113-c0d3764c6384"


class Jsonb:  # stands for psycopg's wrapper, which carries the value in .obj
    def __init__(self, obj: Any) -> None:
        self.obj = obj


def test_script_gives_each_run_fresh_ids_and_keeps_literals_free_of_pgbench_variables() -> None:
    at = dt.datetime(2026, 12, 6, 22, 57, 6, 472876, tzinfo=dt.UTC)
    script = pgbench_script(
        [
            Transaction(
                [
                    (
                        "INSERT INTO inbox (message_id, saga_id, processed_at) VALUES "
                        "(%(message_id)s::VARCHAR, %(saga_id)s::VARCHAR, "
                        "%(at)s::TIMESTAMP WITH TIME ZONE)",
                        {"message_id": MESSAGE, "saga_id": SAGA, "at": at},
                    ),
                    (
                        "UPDATE sagas SET data=%(data)s::JSONB, reason=%(reason)s::VARCHAR "
                        "WHERE sagas.id = %(b_id)s::VARCHAR AND x LIKE 'a%%'",
                        {"data": Jsonb({"note": "o'k :x"}), "reason": None, "b_id": SAGA},
                    ),
                ]
            ),
            Transaction([("SELECT %(n)s", {"n": 1})], autocommit=True),
        ]
    ).splitlines()
    assert script[0] == "\\set r random(1, 9223372036854775806)"
    assert script[1] == "BEGIN;" and script[4] == "COMMIT;"
    # An autocommitted statement goes alone, as the product sends it.
    assert script[5:] == ["SELECT 1;"]
    insert, update = script[2], script[3]
    # The same id is the same expression everywhere; different ids differ.
    saga_expr = "(md5(:r::text || '-1')::uuid::text)"
    assert "(md5(:r::text || '-0')::uuid::text)::VARCHAR" in insert  # the message id
    assert f"{saga_expr}::VARCHAR" in insert and f"sagas.id = {saga_expr}" in update
    assert SAGA not in "\n".join(script) and MESSAGE not in "\n".join(script)
    assert f"to_timestamp({at.timestamp()!r})" in insert
    # A quote doubled, ':x' hidden from pgbench, None as NULL, '%%' back to '%'.
    assert "('{\"note\": \"o''k ' || chr(58) || 'x\"}')::JSONB" in update
    assert "reason=NULL::VARCHAR" in update and "LIKE 'a%';" in update


def point(workers: int, relays: int, rate: float, **over: Any) -> dict[str, Any]:
    base = {
        "workers": workers,
        "relays": relays,
        "sagas_per_second": rate,
        "machine_busy_fraction": 0.97,
        "cpu_seconds_by_group": {"workers": 6.0, "postgres backends of this run": 2.0},
        "cpu_seconds_others": 2.0,
        "hottest_process": {"group": "relays", "pid": 1, "peak_cores": 0.4},
        "pg_commits_per_second": 300.0,
        "step_queue_depth_mean": 40.0,
        "outbox_backlog_mean": 0.0,
    }
    return base | over


def test_knee_is_where_doubling_the_workers_adds_less_than_15_percent() -> None:
    points = [point(1, 1, 50.0), point(2, 1, 80.0), point(4, 1, 84.0)]
    points += [point(1, 2, 50.0), point(2, 2, 52.0), point(4, 2, 53.0)]
    k = knee(points)
    assert k["1 relay(s)"]["knee_at_workers"] == 2
    assert [g["gain"] for g in k["1 relay(s)"]["gains"]] == [1.6, 1.05]
    assert k["2 relay(s)"]["knee_at_workers"] == 1 and k["2 relay(s)"]["flat_from_the_start"]
    still = knee([point(1, 1, 10.0), point(2, 1, 20.0), point(4, 1, 40.0)])["1 relay(s)"]
    assert still["knee_at_workers"] is None and not still["flat_from_the_start"]


def test_verdict_names_the_saturated_resource_from_the_figures() -> None:
    cpu = verdict(point(2, 1, 80.0), floor_commits_per_second=1000.0)
    assert cpu.startswith("CPU: the ") and "97% busy" in cpu and "workers 60%" in cpu
    assert "PostgreSQL commits at 30% of the pgbench floor" in cpu
    assert "workers behind" in cpu
    costed = verdict(
        point(
            2,
            1,
            80.0,
            cpu_ms_per_saga_by_group={"workers": 12.0, "relays": 3.0, "bench": 5.0},
            cpu_ms_per_saga=20.0,
            cpu_bound_sagas_per_second=100.0,
        ),
        None,
    )
    assert costed.startswith("CPU: the ")
    assert "the stack's CPU per saga 20.0 ms (most: workers 12.0 ms, bench 5.0 ms)" in costed
    assert "allows 100.0 sagas/s on " in costed
    idle = verdict(
        point(
            1,
            1,
            10.0,
            machine_busy_fraction=0.4,
            hottest_process={"group": "relays", "pid": 7, "peak_cores": 0.98},
            step_queue_depth_mean=0.0,
            outbox_backlog_mean=120.0,
        ),
        None,
    )
    assert idle.startswith("CPU not saturated (40% busy")
    assert "one relays process peaked at 0.98 of a core" in idle
    assert "relay behind" in idle and "workers behind" not in idle


def test_fractions_divide_each_benchmark_by_the_floor_of_the_same_run() -> None:
    floor = {
        "postgres": {"sagas_per_second": 200.0, "naive_sagas_per_second": 1000.0},
        "rabbitmq": {
            "confirmed_batched_per_second": 10000.0,
            "confirmed_one_at_a_time_per_second": 1000.0,
            "consume_ack_per_second": 5000.0,
        },
    }
    relay = {"batched_per_second": 7500.0, "one_at_a_time_per_second": 900.0}
    out = fractions({"floor": floor, "relay": relay})
    assert out == {
        "relay batched msgs/s / RabbitMQ batched-confirm floor": 0.75,
        "relay one-at-a-time msgs/s / RabbitMQ one-at-a-time floor": 0.9,
    }
    assert fractions({"relay": relay}) == {}
    # A benchmark whose JSON changed shape is skipped, not a crash at the end of `all`.
    changed = {"ours": {"sagas_per_second": 50.0}, "naive": {}}
    assert fractions({"floor": floor, "local": changed}) == {
        "local ours sagas/s / PostgreSQL saga floor": 0.25
    }
