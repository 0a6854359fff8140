"""The orchestrator service over the in-memory fakes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from saga.app.errors import (
    IdempotencyConflict,
    InvalidIdempotencyKey,
    InvalidInput,
    OperatorActionRefused,
    SagaNotFound,
)
from saga.app.orchestrator import Orchestrator
from saga.app.steps import Outcome
from saga.core.definitions import Registry, SagaDefinition, Step, StepContext
from saga.core.errors import UnknownSaga
from saga.core.purpose import Purpose
from saga.core.retry import RetryPolicy
from saga.core.state import SagaStatus, StepStatus
from saga.core.step_message import MalformedMessage, StepMessage
from saga.ports.store import StoreUnavailable
from tests.fakes import (
    FakeDatabase,
    FakeOutboxReader,
    FakePublisher,
    FakeSession,
    FakeUnitOfWork,
)
from tests.support.orchestrator_world import (
    ORDER,
    Declined,
    DriverGone,
    Order,
    World,
    shop,
)


@pytest.fixture
def w() -> World:
    return World()


# -- enqueue ----------------------------------------------------------------------


def test_enqueue_stores_saga_and_first_message(w: World) -> None:
    e = w.orch.enqueue("shop", ORDER)
    assert e.created
    record = w.db.saga(e.saga_id)
    assert record is not None
    assert record.state.status is SagaStatus.RUNNING
    assert record.input == ORDER
    [m] = w.messages()
    assert (m.saga_id, m.step, m.attempt, m.phase, m.version) == (
        e.saga_id,
        "reserve",
        1,
        Purpose.DO,
        1,
    )
    _, history = w.orch.get(e.saga_id)
    assert [h.kind for h in history] == ["started"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"order_id": "o", "amount": -1}, "amount"),
        ({"order_id": "", "amount": 1}, "order_id"),
        ({"amount": 1}, "order_id"),
        ({"order_id": "o", "amount": 1, "coupon": "x"}, "coupon"),
        ({"order_id": "o", "amount": "lots"}, "amount"),
        # Strict JSON types at the door: neither a boolean nor a numeric string
        # is a number, nor a number a string.
        ({"order_id": "o", "amount": True}, "amount"),
        ({"order_id": "o", "amount": "12"}, "amount"),
        ({"order_id": "o", "amount": 1.5}, "amount"),
        ({"order_id": 7, "amount": 1}, "order_id"),
    ],
)
def test_invalid_input_names_the_field_and_stores_nothing(
    w: World, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        w.orch.enqueue("shop", payload, idempotency_key="k")
    assert f"{field}:" in str(info.value)
    assert "'shop'" in str(info.value)
    assert any(field in e["loc"] for e in info.value.errors)
    assert w.db.commits == 0
    assert w.db.tables.sagas == {} and w.db.tables.outbox == []


def test_a_definition_may_opt_into_lax_input(w: World) -> None:
    lax = replace(w.registry.get("shop"), lax_input=True)
    orch = Orchestrator(Registry([lax]), w.db.uow, new_id=lambda: "lax")
    e = orch.enqueue("shop", {"order_id": "o", "amount": "12"})
    record = w.db.saga(e.saga_id)
    assert record is not None and record.input == {"order_id": "o", "amount": 12}


def test_payload_that_is_not_an_object(w: World) -> None:
    with pytest.raises(InvalidInput, match=r"\(payload\)"):
        w.orch.enqueue("shop", ["not", "a", "dict"])
    assert w.db.commits == 0


def test_unknown_saga_stores_nothing(w: World) -> None:
    with pytest.raises(UnknownSaga, match="'nope'"):
        w.orch.enqueue("nope", ORDER, idempotency_key="k")
    assert w.db.commits == 0 and w.db.tables.sagas == {}


@pytest.mark.parametrize("key", ["", "x" * 201, "tab\there", "nl\n"])
def test_invalid_idempotency_key(w: World, key: str) -> None:
    with pytest.raises(InvalidIdempotencyKey):
        w.orch.enqueue("shop", ORDER, idempotency_key=key)
    assert w.db.commits == 0


def test_same_key_same_payload_same_saga(w: World) -> None:
    first = w.orch.enqueue("shop", ORDER, idempotency_key="k1")
    again = w.orch.enqueue("shop", {"amount": 5, "order_id": "o-1"}, idempotency_key="k1")
    assert again.saga_id == first.saga_id
    assert first.created and not again.created
    assert len(w.db.tables.sagas) == 1
    assert len(w.messages()) == 1


def test_same_key_different_payload_conflicts_and_stores_nothing(w: World) -> None:
    first = w.orch.enqueue("shop", ORDER, idempotency_key="k1")
    before = w.db.snapshot()
    with pytest.raises(IdempotencyConflict) as info:
        w.orch.enqueue("shop", {**ORDER, "amount": 6}, idempotency_key="k1")
    assert info.value.saga_id == first.saga_id
    assert "'k1'" in str(info.value)
    assert w.db.tables == before


def test_no_key_means_a_new_saga_each_time(w: World) -> None:
    a = w.orch.enqueue("shop", ORDER)
    b = w.orch.enqueue("shop", ORDER)
    assert a.saga_id != b.saga_id


@pytest.mark.parametrize(("payload", "conflict"), [(ORDER, False), ({**ORDER, "amount": 9}, True)])
def test_race_for_a_key_lost_at_commit(payload: dict[str, Any], conflict: bool) -> None:
    """Another API instance commits the same key just before our insert: the insert
    finds the key taken (there is no lookup before it) and answers as the winner."""
    w = World()
    other = Orchestrator(w.registry, w.db.uow, new_id=lambda: "other")
    opened = 0

    def racing_uow() -> FakeUnitOfWork:
        nonlocal opened
        opened += 1
        if opened == 1:  # ours is about to insert: the other instance gets there first
            other.enqueue("shop", ORDER, idempotency_key="k")
        return w.db.uow()

    orch = Orchestrator(w.registry, racing_uow, new_id=lambda: "mine")
    if conflict:
        with pytest.raises(IdempotencyConflict):
            orch.enqueue("shop", payload, idempotency_key="k")
    else:
        e = orch.enqueue("shop", payload, idempotency_key="k")
        assert e == type(e)("other", created=False)
    assert list(w.db.tables.sagas) == ["other"]
    assert len(w.messages()) == 1


def test_new_sagas_take_latest_version_in_flight_keep_theirs() -> None:
    w = World(1)
    old = w.orch.enqueue("shop", ORDER).saga_id
    w.deliver_next()  # reserve done under v1
    w.registry.add(shop(w.script, 2))
    new = w.orch.enqueue("shop", {**ORDER, "order_id": "o-2"}).saga_id
    assert w.state(new).version == 2
    w.drain()
    assert w.state(old).version == 1
    assert [s for s, _ in w.effects(old)] == ["reserve", "charge", "ship", "notify"]
    assert [s for s, _ in w.effects(new)] == ["reserve", "charge", "audit", "ship", "notify"]


# -- handle -----------------------------------------------------------------------


def test_happy_path_each_step_once_and_outputs_kept(w: World) -> None:
    sid = w.orch.enqueue("shop", ORDER).saga_id
    w.drain()
    record = w.db.saga(sid)
    assert record is not None
    assert record.state.status is SagaStatus.COMPLETED
    assert w.effects(sid) == [(s, "do") for s in ("reserve", "charge", "ship", "notify")]
    assert record.data["charge"] == {"by": "charge", "seen": ["reserve"]}
    assert len(w.db.tables.inbox) == 4


def test_duplicate_message_does_nothing(w: World) -> None:
    sid = w.orch.enqueue("shop", ORDER).saga_id
    m, outcome = w.deliver_next()
    assert outcome is Outcome.APPLIED
    before = w.db.snapshot()
    assert w.orch.handle(m) is Outcome.DUPLICATE
    assert w.db.tables == before
    assert w.effects(sid) == [("reserve", "do")]


def test_stale_attempt_is_recorded_and_does_nothing(w: World) -> None:
    w.script.then("reserve", "do", RuntimeError("flaky"))
    sid = w.orch.enqueue("shop", ORDER).saga_id
    w.deliver_next()  # attempt 1 fails, attempt 2 is queued
    stale = StepMessage("late-copy", sid, "shop", 1, "reserve", 1, Purpose.DO)
    assert w.orch.handle(stale) is Outcome.STALE
    assert "late-copy" in w.db.tables.inbox
    assert w.effects(sid) == []
    assert w.script.calls == [("reserve", "do", 1)]
    # a compensation nobody asked for is stale too
    undo = StepMessage("undo-early", sid, "shop", 1, "reserve", 1, Purpose.UNDO)
    assert w.orch.handle(undo) is Outcome.STALE
    w.drain()
    assert w.state(sid).status is SagaStatus.COMPLETED
    assert w.effects(sid).count(("reserve", "do")) == 1
    assert w.orch.handle(StepMessage("after-end", sid, "shop", 1, "notify", 1, Purpose.DO)) is (
        Outcome.STALE
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"saga": "other"}, "names saga 'other'"),
        ({"version": 2}, "v2"),
        ({"step": "teleport"}, "no step 'teleport'"),
        ({"saga_id": "missing"}, "no saga with id 'missing'"),
    ],
)
def test_message_naming_wrong_saga_version_or_step(
    w: World, change: dict[str, Any], match: str
) -> None:
    sid = w.orch.enqueue("shop", ORDER).saga_id
    body = {**w.messages()[0].to_body(), "message_id": "bad", **change}
    before = w.db.snapshot()
    with pytest.raises(MalformedMessage, match=match):
        w.orch.handle(StepMessage.from_body(body))
    assert w.db.tables == before
    assert w.effects(sid) == []


def test_failing_action_rolled_back_but_failure_recorded(w: World) -> None:
    w.script.then("reserve", "do", RuntimeError("warehouse busy"))
    sid = w.orch.enqueue("shop", ORDER).saga_id
    m, outcome = w.deliver_next()
    assert outcome is Outcome.APPLIED
    assert w.script.calls == [("reserve", "do", 1)]  # it ran, and wrote...
    assert w.effects(sid) == []  # ...but its write was rolled back
    record = w.db.saga(sid)
    assert record is not None
    step = record.state.steps[0]
    assert (step.status, step.attempts, step.failures) == (StepStatus.PENDING, 2, 1)
    assert step.last_error == "RuntimeError: warehouse busy"
    assert "reserve" not in record.data
    assert m.message_id in w.db.tables.inbox
    retry = w.db.outbox_messages()[-1]
    assert retry.delay == 0.5 and retry.body["attempt"] == 2
    _, history = w.orch.get(sid)
    assert history[-1].kind == "step failed"
    assert history[-1].detail["message"] == "warehouse busy"


def test_non_retryable_failure_compensates_with_writes_in_reverse(w: World) -> None:
    w.script.then("ship", "do", Declined("no stock"))
    sid = w.orch.enqueue("shop", ORDER).saga_id
    w.drain()
    state = w.state(sid)
    assert state.status is SagaStatus.COMPENSATED
    assert "no stock" in (state.reason or "")
    assert w.effects(sid) == [
        ("reserve", "do"),
        ("charge", "do"),
        ("charge", "undo"),
        ("reserve", "undo"),
    ]


def test_compensation_failing_for_good_is_failed_then_resumed(w: World) -> None:
    w.script.then("ship", "do", Declined("no stock"))
    w.script.then("charge", "undo", *[RuntimeError("bank down")] * 5)
    sid = w.orch.enqueue("shop", ORDER).saga_id
    w.drain()
    state = w.state(sid)
    assert state.status is SagaStatus.FAILED
    assert "bank down" in (state.reason or "")
    assert w.effects(sid) == [("reserve", "do"), ("charge", "do")]
    resumed = w.orch.resume(sid, actor="ops", why="bank is back")
    assert resumed.status is SagaStatus.COMPENSATING
    w.drain()
    assert w.state(sid).status is SagaStatus.COMPENSATED
    assert w.effects(sid)[2:] == [("charge", "undo"), ("reserve", "undo")]
    _, history = w.orch.get(sid)
    assert any(h.kind == "resume requested" and h.actor == "ops" for h in history)


def test_operator_compensate_refused_after_pivot_and_unknown_saga(w: World) -> None:
    w.script.then("notify", "do", *[Declined("x")])
    sid = w.orch.enqueue("shop", ORDER).saga_id
    w.drain()
    assert w.state(sid).status is SagaStatus.FAILED
    before = w.db.snapshot()
    with pytest.raises(OperatorActionRefused, match="pivot"):
        w.orch.compensate(sid, actor="ops", why="undo it")
    assert w.db.tables == before
    with pytest.raises(SagaNotFound):
        w.orch.resume("nope", actor="ops", why="x")


def test_operator_compensate_before_pivot(w: World) -> None:
    sid = w.orch.enqueue("shop", ORDER).saga_id
    w.deliver_next()  # reserve done; charge queued
    pending_charge = w.next_message()
    assert pending_charge is not None and pending_charge.step == "charge"
    w.orch.compensate(sid, actor="ops", why="customer cancelled")
    assert w.orch.handle(pending_charge) is Outcome.STALE
    w.delivered.add(pending_charge.message_id)
    w.drain()
    assert w.state(sid).status is SagaStatus.COMPENSATED
    assert w.effects(sid) == [("reserve", "do"), ("reserve", "undo")]


@pytest.mark.parametrize("error", [StoreUnavailable("db gone"), DriverGone("socket closed")])
def test_transient_store_error_in_action_is_raised_not_counted(w: World, error: Exception) -> None:
    w.script.then("reserve", "do", error)
    sid = w.orch.enqueue("shop", ORDER).saga_id
    m = w.next_message()
    assert m is not None
    before = w.db.snapshot()
    with pytest.raises(type(error)):
        w.orch.handle(m)
    assert w.db.tables == before  # no failure counted, no inbox record, no write
    assert w.orch.handle(m) is Outcome.APPLIED  # the redelivery does the step
    assert w.state(sid).steps[0].failures == 0
    assert w.effects(sid) == [("reserve", "do")]


def test_commit_lost_then_redelivered_takes_effect_once(w: World) -> None:
    sid = w.orch.enqueue("shop", ORDER).saga_id
    m = w.next_message()
    assert m is not None
    before = w.db.snapshot()
    w.db.fail_commits = 1
    with pytest.raises(StoreUnavailable):
        w.orch.handle(m)
    assert w.db.tables == before
    assert w.orch.handle(m) is Outcome.APPLIED
    assert w.orch.handle(m) is Outcome.DUPLICATE
    assert w.effects(sid) == [("reserve", "do")]
    assert w.script.calls == [("reserve", "do", 1)] * 2  # it ran twice, took effect once


def test_store_down_at_begin_is_raised(w: World) -> None:
    w.orch.enqueue("shop", ORDER)
    m = w.next_message()
    assert m is not None
    w.db.fail_begin = 1
    with pytest.raises(StoreUnavailable):
        w.orch.handle(m)
    assert w.script.calls == []


def test_store_unavailable_on_enqueue_stores_nothing(w: World) -> None:
    w.db.fail_commits = 1
    with pytest.raises(StoreUnavailable):
        w.orch.enqueue("shop", ORDER, idempotency_key="k")
    assert w.db.tables.sagas == {} and w.db.tables.outbox == []
    e = w.orch.enqueue("shop", ORDER, idempotency_key="k")
    assert e.created


# -- the fakes themselves ---------------------------------------------------------


def test_fake_uow_rolls_back_unless_committed() -> None:
    db = FakeDatabase()
    with db.uow() as uow:
        uow.session.insert("t", v=1)
    assert db.business_rows("t") == [] and db.rollbacks == 1
    with db.uow() as uow:
        uow.session.insert("t", v=1)
        uow.commit()
    assert db.business_rows("t") == [{"v": 1}]
    with pytest.raises(RuntimeError, match="outside"):
        uow.session.insert("t", v=4)


@pytest.mark.parametrize("output", [["not", "a", "mapping"], "text", {"when": object()}])
def test_step_returning_an_unusable_output_is_a_step_failure(output: object) -> None:
    """A bad return value fails the step (and rolls back its writes); it must not
    escape handle(), where a worker could only dead-letter the message and the
    saga would wait for ever."""

    def bad(ctx: StepContext) -> Any:
        assert isinstance(ctx.session, FakeSession)
        ctx.session.insert("effects", saga=ctx.saga_id, step="only", phase="do")
        return output

    definition = SagaDefinition(
        name="bad-output",
        version=1,
        input_model=Order,
        steps=(Step("only", bad, retry=RetryPolicy(max_attempts=1)),),
    )
    db = FakeDatabase()
    orch = Orchestrator(Registry([definition]), db.uow)
    sid = orch.enqueue("bad-output", ORDER).saga_id
    [m] = [StepMessage.from_body(x.body) for x in db.outbox_messages()]
    assert orch.handle(m) is Outcome.APPLIED
    record = db.saga(sid)
    assert record is not None
    assert record.state.status is SagaStatus.COMPENSATED
    assert "TypeError" in (record.state.reason or "")
    assert "'only'" in (record.state.reason or "")
    assert db.business_rows("effects") == []
    assert record.data == {}


def test_fake_outbox_reader_and_publisher_follow_the_relay_contract() -> None:
    w = World()
    w.orch.enqueue("shop", ORDER)
    w.orch.enqueue("shop", {**ORDER, "order_id": "o-2"})
    reader, publisher = FakeOutboxReader(w.db), FakePublisher()
    assert reader.oldest_unpublished_age() is not None
    with reader.claim(10) as rows, reader.claim(10) as others:
        assert [r.message_id for r in rows] == ["id-2", "id-4"]
        assert others == []  # claimed rows are not handed to a second relay
        publisher.fail_batches = 1
        with pytest.raises(ConnectionError):
            publisher.publish_batch(rows)
    assert publisher.published == []
    with reader.claim(1) as rows:
        publisher.publish_batch(rows)
        reader.mark_published([r.id for r in rows])
    with reader.claim(10) as rows:
        assert [r.message_id for r in rows] == ["id-4"]
        publisher.publish_batch(rows)
        reader.mark_published([r.id for r in rows])
    assert [m.message_id for m in publisher.published] == ["id-2", "id-4"]
    assert reader.oldest_unpublished_age() is None
