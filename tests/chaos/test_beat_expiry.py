"""Found by the chaos run: a sweep message that waits in the step queue longer than
the sweep interval must not end up in the dead-letter queue.

Beat published the sweep with Celery's `expires`, which Celery also sends as the
AMQP per-message TTL; the step queue dead-letters what expires, so every sweep
that waited out a backlog or a worker outage landed in the DLQ, reported as "a
delivery limit means the step crashed its worker each time". The DLQ is for
messages an operator must look at; a superseded sweep is not one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from kombu import Connection

from saga.adapters.rabbitmq import Topology
from saga.config import Settings
from tests.support.processes import Processes
from tests.support.rabbitmq import queue_depth
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(120)]

SWEEPS = 5


def test_a_sweep_that_waits_longer_than_its_interval_is_not_dead_lettered(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    settings = replace(
        broker_settings,
        database_url=pg_url,
        sweep_interval=1.0,
        beat_schedule_file=str(tmp_path / "beat.schedule"),
    )
    with Connection(settings.broker_url) as connection:
        Topology.from_settings(settings).declare_kombu(connection)
    with Processes(tmp_path / "logs") as procs:
        # Beat and no worker: every sweep waits in the step queue. Beat's own clock
        # is the evidence of time: when it has published the fifth sweep, the first
        # has sat at the head of the queue for four intervals, so a TTL of one
        # interval (what `expires` set) would have dead-lettered three by then.
        beat = procs.spawn("beat", ["saga", "beat"], settings)
        wait_for(
            lambda: (
                queue_depth(settings.broker_url, settings.step_queue)
                + queue_depth(settings.broker_url, settings.dead_letter_queue)
                >= SWEEPS
            ),
            timeout=60,
            what=f"beat to publish {SWEEPS} sweeps",
            report=procs.report,
            alive=[beat],
        )
    assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 0
    assert queue_depth(settings.broker_url, settings.step_queue) >= SWEEPS
