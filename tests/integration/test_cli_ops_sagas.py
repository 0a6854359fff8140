"""Operator commands on sagas against a real PostgreSQL: list filters, show, retry,
resume and compensate, each recorded with who, when and why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import outbox
from saga.app.orchestrator import Orchestrator
from saga.core.chain import AttemptState
from saga.core.state import SagaState, SagaStatus, StepStatus
from saga.entrypoints.cli.main import app
from saga.ports.store import LedgerAttemptRecord, SagaRecord, UnitOfWorkFactory
from saga.registry_loader import load_registry

DEFINITIONS = "saga.examples.order_payment_ledger"
PAYMENT = {"order_id": "o-1", "customer_id": "c-1", "amount_cents": 1250, "currency": "EUR"}

runner = CliRunner()


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def env(pg_url: str) -> dict[str, str]:
    return {
        "SAGA_DATABASE_URL": pg_url,
        "SAGA_DEFINITIONS": DEFINITIONS,
        "SAGA_LOG_LEVEL": "WARNING",
    }


def _uow(engine: Engine) -> UnitOfWorkFactory:
    return cast(UnitOfWorkFactory, SqlUnitOfWorkFactory(engine))


def _orchestrator(engine: Engine) -> Orchestrator:
    return Orchestrator(load_registry(DEFINITIONS), _uow(engine))


def _saga(args: list[str], env: dict[str, str], code: int = 0) -> str:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == code, (args, result.output)
    return result.output if code else result.stdout


def _json(args: list[str], env: dict[str, str]) -> Any:
    return json.loads(_saga([*args, "--json"], env))


def _set(engine: Engine, saga_id: str, updated_at: datetime | None = None, **state: Any) -> None:
    """Move a stored saga to the given state (as earlier steps would have)."""
    with _uow(engine)() as uow:
        record = uow.sagas.get(saga_id, for_update=True)
        assert record is not None
        new_state: SagaState = replace(record.state, **state)
        uow.sagas.save(replace(record, state=new_state, updated_at=updated_at))
        uow.commit()


def _at_ledger_step(engine: Engine, saga_id: str, **step: Any) -> None:
    """The v2 saga waiting at record_on_ledger (steps 0 and 1 done)."""
    with _uow(engine)() as uow:
        record = uow.sagas.get(saga_id, for_update=True)
        assert record is not None
        state = record.state.with_step(0, status=StepStatus.DONE).with_step(
            1, status=StepStatus.DONE
        )
        state = replace(state, current=2).with_step(2, **{"attempts": 1, **step})
        uow.sagas.save(replace(record, state=state))
        uow.commit()


def _outbox_bodies(engine: Engine, saga_id: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(outbox.c.body).where(outbox.c.saga_id == saga_id).order_by(outbox.c.id)
        )
        return [r.body for r in rows]


def test_list_filters_by_status_name_age_and_limit(engine: Engine, env: dict[str, str]) -> None:
    orch = _orchestrator(engine)
    now = datetime.now(UTC)
    ids = [orch.enqueue("order-payment", PAYMENT).saga_id for _ in range(4)]
    stuck, old_done, fresh, failed = ids
    _set(engine, stuck, updated_at=now - timedelta(hours=3))
    _set(engine, old_done, updated_at=now - timedelta(hours=2), status=SagaStatus.COMPLETED)
    _set(engine, failed, updated_at=now - timedelta(minutes=20), status=SagaStatus.FAILED)
    # Another saga name, stored as its service would (the repository takes any name).
    with _uow(engine)() as uow:
        other = SagaState.new("other-1", "refund", 1, ["refund"])
        uow.sagas.add(SagaRecord(state=other, input={}, updated_at=now - timedelta(days=2)))
        uow.commit()

    everything = _json(["list"], env)
    assert {r["id"] for r in everything} == {*ids, "other-1"}
    # Newest first by last progress.
    assert everything[0]["id"] == fresh
    assert everything[-1]["id"] == "other-1"

    running = _json(["list", "--status", "running"], env)
    assert {r["id"] for r in running} == {stuck, fresh, "other-1"}
    assert all(r["status"] == "running" for r in running)

    assert [r["id"] for r in _json(["list", "--name", "refund"], env)] == ["other-1"]
    by_name = _json(["list", "--name", "order-payment", "--status", "failed"], env)
    assert [r["id"] for r in by_name] == [failed]

    # Age of the last progress, oldest first: the ones stuck longest on top.
    older = _json(["list", "--older-than", "1h"], env)
    assert [r["id"] for r in older] == ["other-1", stuck, old_done]
    older_running = _json(["list", "--older-than", "90m", "--status", "running"], env)
    assert [r["id"] for r in older_running] == ["other-1", stuck]
    cutoff = (now - timedelta(hours=2, minutes=30)).isoformat()
    assert [r["id"] for r in _json(["list", "--older-than", cutoff], env)] == ["other-1", stuck]
    assert [r["id"] for r in _json(["list", "--older-than", "10m", "--limit", "1"], env)] == [
        "other-1"
    ]

    row = next(r for r in everything if r["id"] == stuck)
    assert row["step"] == "reserve_funds" and row["attempt"] == 1 and row["version"] == 2
    # A number of seconds for scripts (the table says 3h).
    assert 3 * 3600 <= row["idle_seconds"] < 3 * 3600 + 600

    table = _saga(["list", "--status", "failed"], env)
    assert failed in table and fresh not in table

    # Bad filters are usage errors (2) that say what to give.
    bad_age = runner.invoke(app, ["list", "--older-than", "yesterday"], env=env)
    assert bad_age.exit_code == 2 and "10m, 2h" in bad_age.output
    bad_status = runner.invoke(app, ["list", "--status", "stuck"], env=env)
    assert bad_status.exit_code == 2


def test_list_finds_by_key_and_input_counts_and_pages_instead_of_stopping(
    engine: Engine, env: dict[str, str]
) -> None:
    orch = _orchestrator(engine)
    keyed = orch.enqueue(
        "order-payment", {**PAYMENT, "customer_id": "c-17"}, idempotency_key="shop-9"
    ).saga_id
    c17 = [keyed] + [
        orch.enqueue("order-payment", {**PAYMENT, "customer_id": "c-17"}).saga_id for _ in range(2)
    ]
    others = [orch.enqueue("order-payment", PAYMENT).saga_id for _ in range(2)]
    _set(engine, others[0], status=SagaStatus.FAILED)

    assert [r["id"] for r in _json(["list", "--key", "shop-9"], env)] == [keyed]
    assert {r["id"] for r in _json(["list", "--input", "customer_id=c-17"], env)} == set(c17)
    assert (
        _json(["list", "--input", "amount_cents=1250", "--status", "failed"], env)[0]["id"]
        == others[0]
    )

    # Totals and the way on, on stderr (stdout stays the JSON or the table).
    first = runner.invoke(app, ["list", "--limit", "2", "--json"], env=env)
    assert first.exit_code == 0, first.output
    assert "showing 2 of 5 (running: 4, failed: 1)" in first.stderr
    cursor = first.stderr.split("--after ")[1].split()[0]
    seen = [r["id"] for r in json.loads(first.stdout)]
    second = runner.invoke(app, ["list", "--limit", "2", "--after", cursor, "--json"], env=env)
    seen += [r["id"] for r in json.loads(second.stdout)]
    assert "showing 2 of 5" in second.stderr and "--after" in second.stderr
    cursor = second.stderr.split("--after ")[1].split()[0]
    last = runner.invoke(app, ["list", "--limit", "2", "--after", cursor], env=env)
    assert last.exit_code == 0, last.output
    assert "showing 1 of 5" in last.stderr and "the last page" in last.stderr
    assert "--after" not in last.stderr
    seen += [i for i in [*c17, *others] if i in last.stdout]
    assert sorted(seen) == sorted([*c17, *others])

    every = runner.invoke(app, ["list"], env=env)
    assert "5 sagas (running: 4, failed: 1)" in every.stderr

    row = _json(["list", "--key", "shop-9"], env)[0]
    assert row["idempotency_key"] == "shop-9" and isinstance(row["idle_seconds"], float)
    assert row["step"] == "reserve_funds" and row["phase"] == "do"

    for args, needle in (
        (["--input", "customer_id"], "FIELD=VALUE"),
        (["--after", "yesterday"], "not a cursor"),
    ):
        bad = runner.invoke(app, ["list", *args], env=env)
        assert bad.exit_code == 2 and needle in bad.output, bad.output


def test_show_has_input_and_key_marks_the_step_to_fix_and_shares_the_json_fields(
    engine: Engine, env: dict[str, str]
) -> None:
    orch = _orchestrator(engine)
    saga_id = orch.enqueue(
        "order-payment", {**PAYMENT, "customer_id": "c-17"}, idempotency_key="shop-order-1"
    ).saga_id
    text = _saga(["show", saga_id], env)
    assert "idempotency key: shop-order-1" in text
    assert '"customer_id": "c-17"' in text and '"amount_cents": 1250' in text

    # Same fields, same values, in show, list and wait (idle_seconds moves on).
    shown = _json(["show", saga_id], env)
    listed = _json(["list", "--key", "shop-order-1"], env)[0]
    waited = _json(["wait", saga_id, "--status", "running", "--timeout", "0"], env)
    for key, value in listed.items():
        if key != "idle_seconds":
            assert shown[key] == value, key
            assert waited[key] == value, key
    assert shown["input"]["customer_id"] == "c-17"
    assert shown["idempotency_key"] == "shop-order-1"

    # Compensation of the ledger step failed for good: the marker is on it, the step
    # to fix (not on the step whose failure started the compensation).
    with _uow(engine)() as uow:
        record = uow.sagas.get(saga_id, for_update=True)
        assert record is not None
        state = record.state
        for i in (0, 1):
            state = state.with_step(i, status=StepStatus.DONE)
        state = state.with_step(2, status=StepStatus.COMPENSATION_FAILED, last_error="refused")
        state = state.with_step(3, status=StepStatus.FAILED, last_error="OrderRejected: no")
        state = replace(state, current=2, status=SagaStatus.FAILED, reason="compensation failed")
        uow.sagas.save(replace(record, state=state))
        uow.commit()
    failed = _json(["show", saga_id], env)
    assert [s["name"] for s in failed["steps"] if s["current"]] == ["record_on_ledger"]
    assert (failed["step"], failed["step_status"], failed["phase"]) == (
        "record_on_ledger",
        "compensation_failed",
        "undo",
    )
    marked = [line for line in _saga(["show", saga_id], env).splitlines() if "▶" in line]
    assert len(marked) == 1 and "record_on_ledger" in marked[0]

    # Finished: no step is current, no marker.
    _set(engine, saga_id, status=SagaStatus.COMPENSATED, current=0)
    done = _json(["show", saga_id], env)
    assert not any(s["current"] for s in done["steps"])
    assert done["current_step"] is None and done["step"] is None
    assert "▶" not in _saga(["show", saga_id], env)


def test_show_gives_the_step_timeline_every_ledger_attempt_and_the_history(
    engine: Engine, env: dict[str, str]
) -> None:
    saga_id = _orchestrator(engine).enqueue("order-payment", PAYMENT).saga_id
    _at_ledger_step(
        engine, saga_id, attempts=2, failures=1, last_error="LedgerConflict: MVCC_READ_CONFLICT"
    )
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    first = LedgerAttemptRecord(
        saga_id=saga_id,
        step="record_on_ledger",
        purpose="do",
        txid="a" * 64,
        channel="mychannel",
        envelope=b"signed-envelope-never-shown",
        state=AttemptState.COMMITTED,
        code=11,
        block=7,
        created_at=t0,
        submitted_at=t0 + timedelta(seconds=1),
        committed_at=t0 + timedelta(seconds=3),
        worker="worker-host-a",
    )
    second = replace(
        first,
        txid="b" * 64,
        state=AttemptState.SUBMITTED,
        code=None,
        block=None,
        created_at=t0 + timedelta(seconds=10),
        submitted_at=t0 + timedelta(seconds=11),
        committed_at=None,
        worker="worker-host-b",
    )
    with _uow(engine)() as uow:
        uow.ledger_attempts.add(first)
        uow.ledger_attempts.add(second)
        uow.commit()
    _saga(["retry", saga_id, "--why", "commit wait lost", "--actor", "alice"], env)

    shown = _json(["show", saga_id], env)
    assert shown["status"] == "running" and shown["version"] == 2
    assert shown["current_step"] == "record_on_ledger"
    steps = {s["name"]: s for s in shown["steps"]}
    assert [s["name"] for s in shown["steps"]] == [
        "reserve_funds",
        "record_payment",
        "record_on_ledger",
        "confirm_order",
        "notify_customer",
    ]
    chain = steps["record_on_ledger"]
    assert chain["kind"] == "chain" and chain["current"] and chain["status"] == "pending"
    assert chain["attempts"] == 2 and chain["failures"] == 1
    assert chain["last_error"] == "LedgerConflict: MVCC_READ_CONFLICT"
    assert steps["reserve_funds"]["kind"] == "local" and steps["reserve_funds"]["status"] == "done"
    attempts = chain["ledger_attempts"]
    assert [a["txid"] for a in attempts] == ["a" * 64, "b" * 64]
    assert attempts[0] | {"created": None, "submitted": None, "committed": None} == {
        "txid": "a" * 64,
        "purpose": "do",
        "channel": "mychannel",
        "state": "committed",
        "code": 11,
        "code_name": "MVCC_READ_CONFLICT",
        "block": 7,
        "worker": "worker-host-a",
        "created": None,
        "submitted": None,
        "committed": None,
    }
    assert datetime.fromisoformat(attempts[0]["committed"]) == t0 + timedelta(seconds=3)
    assert attempts[1]["state"] == "submitted" and attempts[1]["code_name"] is None
    assert attempts[1]["worker"] == "worker-host-b" and attempts[1]["committed"] is None
    assert all(not s["ledger_attempts"] for s in shown["steps"] if s["name"] != chain["name"])

    history = shown["history"]
    assert history[0]["kind"] == "started"
    retry = history[-1]
    assert retry["kind"] == "retry requested"
    assert retry["actor"] == "alice" and retry["why"] == "commit wait lost"
    assert datetime.fromisoformat(retry["at"]) > datetime.now(UTC) - timedelta(minutes=5)

    text = _saga(["show", saga_id], env)
    for needle in ("a" * 64, "b" * 64, "MVCC_READ_CONFLICT (11)", "worker-host-a", "alice"):
        assert needle in text, needle
    assert "commit wait lost" in text
    assert "signed-envelope" not in text and "signed-envelope" not in json.dumps(shown)

    missing = runner.invoke(app, ["show", "no-such-saga"], env=env)
    assert missing.exit_code == 1 and "saga list" in missing.output


def test_retry_writes_exactly_one_message_for_the_current_attempt_and_records_it(
    engine: Engine, env: dict[str, str]
) -> None:
    saga_id = _orchestrator(engine).enqueue("order-payment", PAYMENT).saga_id
    _at_ledger_step(engine, saga_id, attempts=3, failures=2)
    before = _outbox_bodies(engine, saga_id)

    result = _json(["retry", saga_id, "--why", "message dead-lettered", "--actor", "bob"], env)

    after = _outbox_bodies(engine, saga_id)
    assert len(after) == len(before) + 1
    body = after[-1]
    assert body["message_id"] == result["message_id"]
    assert (body["step"], body["attempt"], body["phase"]) == ("record_on_ledger", 3, "do")
    assert (body["saga"], body["version"]) == ("order-payment", 2)
    # Nothing about the saga moved: the worker decides, through the verify path.
    record, history = _orchestrator(engine).get(saga_id)
    assert record.state.steps[2].attempts == 3 and record.state.status is SagaStatus.RUNNING
    entry = history[-1]
    assert entry.kind == "retry requested" and entry.actor == "bob"
    assert entry.detail["why"] == "message dead-lettered"
    assert entry.detail["message_id"] == body["message_id"]

    # A compensating saga is re-driven at its compensation attempt.
    _set(engine, saga_id, status=SagaStatus.COMPENSATING, current=1)
    with _uow(engine)() as uow:
        record2 = uow.sagas.get(saga_id, for_update=True)
        assert record2 is not None
        uow.sagas.save(replace(record2, state=record2.state.with_step(1, compensation_attempts=2)))
        uow.commit()
    undo = _json(["retry", saga_id, "--why", "undo stuck"], env)
    assert (undo["step"], undo["phase"], undo["attempt"]) == ("record_payment", "undo", 2)
    assert len(_outbox_bodies(engine, saga_id)) == len(before) + 2


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (SagaStatus.COMPLETED, "this one is completed, nothing is left to run"),
        (SagaStatus.COMPENSATED, "this one is compensated"),
        (SagaStatus.FAILED, "resume it"),
    ],
)
def test_retry_refuses_a_saga_that_is_not_running(
    engine: Engine, env: dict[str, str], status: SagaStatus, expected: str
) -> None:
    saga_id = _orchestrator(engine).enqueue("order-payment", PAYMENT).saga_id
    _set(engine, saga_id, status=status)
    before = _outbox_bodies(engine, saga_id)
    _, history_before = _orchestrator(engine).get(saga_id)

    output = _saga(["retry", saga_id, "--why", "try"], env, code=1)

    assert expected in output, output
    assert _outbox_bodies(engine, saga_id) == before
    assert len(_orchestrator(engine).get(saga_id)[1]) == len(history_before)


def test_retry_refusals_for_usage_and_unknown_sagas(engine: Engine, env: dict[str, str]) -> None:
    assert "no saga with id" in _saga(["retry", "nope", "--why", "x"], env, code=1)
    saga_id = _orchestrator(engine).enqueue("order-payment", PAYMENT).saga_id
    assert "--why" in _saga(["retry", saga_id, "--why", "  "], env, code=2)
    assert runner.invoke(app, ["retry", saga_id], env=env).exit_code == 2


def test_resume_and_compensate_record_who_when_why_and_refuse_with_the_reason(
    engine: Engine, env: dict[str, str]
) -> None:
    orch = _orchestrator(engine)
    running = orch.enqueue("order-payment", PAYMENT).saga_id
    refused = _saga(["resume", running, "--why", "x"], env, code=1)
    assert "only a failed saga can be resumed; this one is running" in refused
    assert "saga retry" in refused

    out = _saga(["compensate", running, "--why", "customer cancelled", "--actor", "carol"], env)
    assert "compensat" in out and "carol" in out
    record, history = orch.get(running)
    assert record.state.status is SagaStatus.COMPENSATED
    entry = next(h for h in history if h.kind == "compensation requested")
    assert entry.actor == "carol" and entry.detail["why"] == "customer cancelled"
    assert entry.at > datetime.now(UTC) - timedelta(minutes=5)
    again = _saga(["compensate", running, "--why", "again"], env, code=1)
    assert "a compensated saga cannot be compensated" in again

    failed = orch.enqueue("order-payment", PAYMENT).saga_id
    _at_ledger_step(engine, failed, status=StepStatus.FAILED, failures=5)
    _set(engine, failed, status=SagaStatus.FAILED, reason="gave up")
    _saga(["resume", failed, "--why", "peer is back", "--actor", "dave"], env)
    record, history = orch.get(failed)
    assert record.state.status is SagaStatus.RUNNING and record.state.steps[2].attempts == 2
    entry = history[-1]
    assert entry.kind == "resume requested" and entry.actor == "dave"
    assert entry.detail["why"] == "peer is back"
    # Past the pivot a saga only goes forward; the refusal says so.
    _set(engine, failed, status=SagaStatus.FAILED)
    with _uow(engine)() as uow:
        rec = uow.sagas.get(failed, for_update=True)
        assert rec is not None
        state = rec.state.with_step(2, status=StepStatus.DONE).with_step(3, status=StepStatus.DONE)
        uow.sagas.save(replace(rec, state=replace(state, current=4)))
        uow.commit()
    past = _saga(["compensate", failed, "--why", "x"], env, code=1)
    assert "passed its pivot" in past
