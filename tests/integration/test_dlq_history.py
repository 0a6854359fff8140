"""A dead letter keeps what happened to it: every dead-lettering's reason, who replayed
it, when and why, and how often (real RabbitMQ, PostgreSQL and a real worker).

A message that only loops is refused by `saga dlq replay` past --max-replays, and a
binary body is shown as a hex dump, in full (base64) with --json.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from saga.adapters.sql import create_engine
from saga.app.dlq import REPLAYS
from saga.config import Settings
from saga.examples.order_payment import NAME
from tests.support.broker_messages import poison_cases, publish_to_step_queue
from tests.support.dlq import PAYMENT, dead_letter, saga_cli, saga_cli_json, step_message_body
from tests.support.rabbitmq import queue_depth
from tests.support.waiting import wait_for
from tests.support.workers import celery_worker, orchestrator


@pytest.fixture
def settings(broker_settings: Settings, pg_url: str) -> Settings:
    return replace(broker_settings, database_url=pg_url)


@pytest.fixture
def engine(settings: Settings) -> Any:
    engine = create_engine(settings)
    yield engine
    engine.dispose()


def test_a_replayed_message_that_fails_again_keeps_its_count_and_history(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    orch = orchestrator(engine, settings)
    victim = orch.enqueue(NAME, PAYMENT).saga_id
    cases = poison_cases(victim)
    log = tmp_path / "worker.log"

    def depth() -> int:
        return queue_depth(settings.broker_url, settings.dead_letter_queue)

    with celery_worker(settings, log):
        # One judged inside the task (the orchestrator knows no such step), one
        # screened by the consumer (not JSON): the two ways a worker dead-letters.
        publish_to_step_queue(settings, [cases["unknown-step"][0], cases["not-json"][0]])
        wait_for(lambda: depth() == 2, timeout=60, what="two poison messages", log=log)
        first = {m["error"]: m for m in saga_cli_json(["dlq", "list"], settings)}
        assert set(first) == {"MalformedMessage", "DecodeError"}
        assert all(m["replays"] == 0 for m in first.values())

        for actor, why in (("alice", "first try, OPS-1"), ("bob", "second try, OPS-2")):
            saga_cli(["dlq", "replay", "--all", "--why", why, "--actor", actor], settings)
            wait_for(lambda: depth() == 2, timeout=60, what="the poison back", log=log)

    listed = {m["error"]: m for m in saga_cli_json(["dlq", "list"], settings)}
    assert set(listed) == {"MalformedMessage", "DecodeError"}
    for error, message in sorted(listed.items(), reverse=True):
        assert message["replays"] == 2, (error, listed)
        shown = saga_cli_json(["dlq", "show", str(message["position"])], settings)
        history = shown["history"]
        assert [h["replayed_by"] for h in history] == ["alice", "bob"], history
        assert [h["why"] for h in history] == ["first try, OPS-1", "second try, OPS-2"]
        for past in history:
            # Each past dead-lettering: its own reason, error, time, worker.
            assert past["reason"] == first[error]["reason"]
            assert past["error"] == error and past["worker"]
            datetime.fromisoformat(past["at"])
            datetime.fromisoformat(past["replayed_at"])
        assert history[0]["replayed_at"] <= history[1]["replayed_at"]
        # The dead-lettering now in force is the third one, with the same reason.
        assert shown["reason"] == first[error]["reason"] and shown["replays"] == 2

    text = saga_cli(["dlq", "list"], settings).stdout
    assert text.count("replayed 2x") == 2
    position = listed["MalformedMessage"]["position"]
    plain = saga_cli(["dlq", "show", str(position)], settings).stdout
    assert "history" in plain and "alice" in plain and "second try, OPS-2" in plain

    # The saga's own history says the same, count included.
    _, saga_history = orch.get(victim)
    notes = [h for h in saga_history if h.kind == "dead letter replayed"]
    assert [n.detail["replays"] for n in notes] == [0, 1]
    assert [n.actor for n in notes] == ["alice", "bob"]


def test_replay_refuses_a_message_that_only_loops_and_warns_about_one_that_came_back(
    settings: Settings,
) -> None:
    saga_id = str(uuid.uuid4())
    looping, headers, looping_id = step_message_body(saga_id, step="looping")
    dead_letter(
        settings,
        looping,
        {**headers, REPLAYS: 3},
        reason="no step 'looping'",
        message_id=looping_id,
    )
    once, headers, once_id = step_message_body(saga_id, step="once")
    dead_letter(
        settings, once, {**headers, REPLAYS: 1}, reason="no step 'once'", message_id=once_id
    )

    refused = saga_cli(["dlq", "replay", "1", "--why", "again"], settings, code=1)
    assert "replayed 3 time(s)" in refused.output and "--max-replays" in refused.output
    assert [m["message_id"] for m in saga_cli_json(["dlq", "list"], settings)] == [
        looping_id,
        once_id,
    ]

    result = saga_cli(["dlq", "replay", "--all", "--why", "again", "--json"], settings, code=1)
    report = json.loads(result.stdout)
    assert [m["message_id"] for m in report["messages"]] == [once_id]
    assert [m["message_id"] for m in report["refused"]] == [looping_id]
    assert "replayed 1 time(s) before" in result.stderr
    # Refused means kept, in its place.
    assert [m["message_id"] for m in saga_cli_json(["dlq", "list"], settings)] == [looping_id]
    assert queue_depth(settings.broker_url, settings.step_queue) == 1

    forced = saga_cli_json(
        ["dlq", "replay", "1", "--max-replays", "4", "--why", "cause fixed, OPS-3"], settings
    )
    assert [m["message_id"] for m in forced["messages"]] == [looping_id]
    assert forced["refused"] == []
    assert saga_cli(["dlq", "replay", "1", "--max-replays", "0", "--why", "x"], settings, code=2)


def test_a_binary_body_is_shown_as_hex_and_given_in_full_with_json(settings: Settings) -> None:
    body = bytes(range(256)) + b"\xff" * 44
    dead_letter(settings, body, {}, reason="cannot decode", content_type="application/octet-stream")
    shown = saga_cli_json(["dlq", "show", "1"], settings)
    assert shown["body_bytes"] == 300
    assert base64.b64decode(shown["body_base64"]) == body
    assert shown["body"].startswith("<300 bytes, not text: 00 01 02 03")

    plain = saga_cli(["dlq", "show", "1"], settings).stdout
    assert "00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f" in plain
    assert "000000f0  f0 f1 f2" in plain
    assert "44 more byte(s)" in plain and "--json" in plain

    # A text body is masked, so its raw bytes are not given.
    dead_letter(settings, b'{"password": "hunter2"}', {}, reason="not a task message")
    masked = saga_cli_json(["dlq", "show", "2"], settings)
    assert masked["body_base64"] is None and "hunter2" not in str(masked)
