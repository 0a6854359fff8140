"""Relay processes killed mid-batch, and two relays at once (real RabbitMQ, PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from saga.adapters.sql import create_engine
from saga.config import Settings
from tests.support.outbox import add_outbox_rows, unpublished
from tests.support.rabbitmq import drain, message_id_of
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def relay_process(settings: Settings, **env: str) -> subprocess.Popen[str]:
    environ = {
        **os.environ,
        "SAGA_DATABASE_URL": settings.database_url,
        "SAGA_BROKER_URL": settings.broker_url,
        "SAGA_STEP_QUEUE": settings.step_queue,
        "SAGA_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "SAGA_RELAY_BATCH_SIZE": str(settings.relay_batch_size),
        "SAGA_RELAY_POLL_INTERVAL": "0.05",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.relay_process"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> dict[str, int]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, f"relay exited with {process.returncode}"
    result: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.fault
def test_relay_killed_between_publish_and_mark_only_duplicates(
    broker_settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    settings = replace(broker_settings, database_url=pg_url, relay_batch_size=50)
    engine = create_engine(settings)
    try:
        ids = add_outbox_rows(engine, 120)
        pause_file = tmp_path / "paused"
        victim = relay_process(settings, SAGA_TEST_RELAY_PAUSE_FILE=str(pause_file))
        try:
            wait_for(pause_file.exists, timeout=60, what="the relay to reach the pause point")
        finally:
            victim.kill()  # SIGKILL: no cleanup, no mark
            victim.wait(timeout=10)
        paused_ids = json.loads(pause_file.read_text())
        assert len(paused_ids) == 50
        # Confirmed by the broker, never marked: the rows are all still pending.
        assert unpublished(engine) == 120

        survivor = relay_process(settings)
        try:
            wait_for(lambda: unpublished(engine) == 0, timeout=60, what="the outbox to drain")
        finally:
            stats = stop(survivor)
        assert stats["published"] == 120

        got = Counter(
            message_id_of(m)
            for m in drain(settings.broker_url, settings.step_queue, expect=170, timeout=30)
        )
        assert set(got) == set(ids)
        assert sum(got.values()) == 170
        assert sorted(got.values()).count(2) == 50  # the killed batch, twice
        assert set(got.values()) == {1, 2}
    finally:
        engine.dispose()


@pytest.mark.fault
def test_two_relays_at_once_publish_every_row_once(broker_settings: Settings, pg_url: str) -> None:
    settings = replace(broker_settings, database_url=pg_url, relay_batch_size=100)
    engine = create_engine(settings)
    try:
        ids = add_outbox_rows(engine, 3000)
        relays = [relay_process(settings), relay_process(settings)]
        try:
            wait_for(lambda: unpublished(engine) == 0, timeout=60, what="the outbox to drain")
        finally:
            stats = [stop(r) for r in relays]
        assert sum(s["published"] for s in stats) == 3000
        got = [
            message_id_of(m)
            for m in drain(settings.broker_url, settings.step_queue, expect=3000, timeout=60)
        ]
        # SKIP LOCKED: a row claimed by one relay is invisible to the other.
        assert len(got) == 3000
        assert set(got) == set(ids)
        print(f"relay shares: {[s['published'] for s in stats]}")
    finally:
        engine.dispose()
