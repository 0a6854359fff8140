"""`python -m bench floor` and `scale` at a tiny size against the real PostgreSQL and
RabbitMQ: the JSON has its shape and every figure is a measurement (positive), so a
change to the store or the processes that breaks either command shows up here
(they are commands of their own, outside the suite, otherwise)."""

from __future__ import annotations

from bench.floor import postgres_floor, rabbitmq_floor
from bench.scale import bench_scale


def test_floor_replays_a_real_saga_through_pgbench_and_moves_messages_with_confirms() -> None:
    pg = postgres_floor(1.0, (1,))
    # One bench-3 saga: the enqueue and at least one worker transaction, each replayed.
    assert pg["commits_per_saga"] >= 2 and pg["statements_per_saga"] > pg["commits_per_saga"]
    in_blocks = pg["commits_per_saga"] - pg["autocommitted_statements_per_saga"]
    assert pg["script"].count("COMMIT;") == pg["script"].count("BEGIN;") == in_blocks > 0
    script = "\n".join(pg["script"])
    for table in ("sagas", "inbox", "outbox", "order_payment_events"):  # the step's own write too
        assert f"INSERT INTO {table} " in script, table
    for runs in ("saga_script_by_clients", "saga_script_without_notify_by_clients"):
        assert [r["failed"] for r in pg[runs]] == [0] and pg[runs][0]["runs"] > 0
    assert pg["sagas_per_second"] > 0 and pg["sagas_per_second_without_notify"] > 0
    assert pg["commits_per_second"] == round(pg["sagas_per_second"] * pg["commits_per_saga"], 1)
    assert pg["naive_commits_per_second"] > 0 and pg["server"]["fsync"] in ("on", "off")

    mq = rabbitmq_floor(300, 20, batch=100)
    assert mq["messages"] == {"batched": 300, "one_at_a_time": 20, "consumed": 420}
    for key in (
        "confirmed_batched_per_second",
        "confirmed_one_at_a_time_per_second",
        "consume_ack_per_second",
    ):
        assert mq[key] > 0, key


def test_scale_point_measures_throughput_and_cpu_of_the_real_processes() -> None:
    result = bench_scale(20, workers=(1,), relays=(1,), floor_commits_per_second=1000.0)
    assert result["cores"] >= 1 and "cores shared" in result["note"]
    [point] = result["points"]
    assert point["statuses"] == {"completed": 20} and point["sagas_per_second"] > 0
    groups = point["cpu_seconds_by_group"]
    # The worker and the relay ran the sagas: their CPU is found and counted as theirs.
    assert groups["workers"] > 0 and groups["relays"] > 0, groups
    assert groups["postgres backends of this run"] > 0, groups
    assert point["pg_commits"] >= 20 and point["pg_commits_per_second"] > 0
    assert 0 < point["machine_busy_fraction"] <= 1.1
    assert point["cpu_ms_per_saga"] > 0 and point["cpu_bound_sagas_per_second"] > 0
    assert "of the pgbench floor" in point["verdict"]
    assert result["knee"]["1 relay(s)"] == {
        "gains": [],
        "knee_at_workers": None,
        "flat_from_the_start": False,
    }
    assert result["best"]["sagas_per_second"] == point["sagas_per_second"]
