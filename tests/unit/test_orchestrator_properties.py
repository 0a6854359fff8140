"""Property tests: random sagas through the Orchestrator and the fakes.

The broker is simulated on top of the fake outbox: every committed outbox row is
delivered at least once, in random order, sometimes again (a worker died before
its ack), and the test also forges late copies of messages for attempts and
steps the saga has moved past. Sometimes the store fails: the unit of work
cannot begin, the commit is lost, or the action itself hits a dropped
connection. Step actions write a business row through the fake session and
then succeed or fail as drawn.

The worker runs following local steps inline or not (drawn), fused into one
transaction or one step per transaction (drawn), some steps declared external
(never fused): a fused run that fails is rolled back and done again step by
step, which runs the steps before the failure a second time.

The business rows are the ground truth: each step that took effect wrote exactly
one row, each compensation exactly one, in reverse order, and never for a step
from the pivot on.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from saga.app.errors import OperatorActionRefused
from saga.app.orchestrator import Orchestrator
from saga.app.steps import Outcome
from saga.core.definitions import Registry, StepContext
from saga.core.machine import why_not_awaited
from saga.core.state import SagaStatus, StepStatus
from saga.core.step_message import StepMessage
from saga.ports.store import StoreUnavailable
from tests.fakes import FakeDatabase, FakeSession
from tests.unit.strategies import ERRORS, Payload, SagaSpec, outcomes, saga_specs

MAX_EXAMPLES = 300
MAX_DELIVERIES = 400


class Transient(Exception):
    """The driver lost its connection (registered as a transient error)."""


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=saga_specs(), data=st.data())
def test_random_sagas_through_the_orchestrator(spec: SagaSpec, data: st.DataObject) -> None:
    seen_outcomes: set[str] = set()
    transient_left = [3]  # how often an action may hit a dropped connection
    transient_raised = [False]

    def behaviour(phase: str) -> Any:
        def make(step: str) -> Any:
            def fn(ctx: StepContext) -> dict[str, Any]:
                assert isinstance(ctx.session, FakeSession)
                ctx.session.insert("effects", step=step, phase=phase, attempt=ctx.attempt)
                outcome = data.draw(outcomes, label=f"{phase} {step}#{ctx.attempt}")
                if outcome == "ok" and transient_left[0] and data.draw(st.booleans()):
                    transient_left[0] -= 1
                    outcome = "transient"
                    transient_raised[0] = True
                if outcome == "transient":
                    raise Transient("connection reset")
                if outcome != "ok":
                    raise ERRORS[outcome](f"{outcome} in {phase} {step}")
                # a compensation's output must not replace the step's own output
                return {"attempt": ctx.attempt} if phase == "do" else {"undone": True}

            return fn

        return make

    names = [s.name for s in spec.steps]
    external = frozenset(data.draw(st.sets(st.sampled_from(names)), label="external steps"))
    definition = spec.build(behaviour("do"), behaviour("undo"), external=external)
    pivot = definition.pivot_index
    inline = data.draw(st.sampled_from([0, 2, 10]), label="inline steps")
    db = FakeDatabase()
    ids = itertools.count(1)
    orch = Orchestrator(
        Registry([definition]),
        db.uow,
        new_id=lambda: f"m{next(ids)}",
        transient_errors=(Transient,),
        fuse_steps=data.draw(st.booleans(), label="fuse"),
    )
    saga_id = orch.enqueue(definition.name, Payload(n=1).model_dump()).saga_id

    queue: list[StepMessage] = []
    known: set[str] = set()
    sent: list[StepMessage] = []  # every message seen, to forge late copies from
    applied: list[StepMessage] = []
    forged = itertools.count(1)
    resumes_left = data.draw(st.integers(0, 2), label="resumes")
    compensate_at = data.draw(st.integers(-1, 30), label="operator compensates at")
    # bounded noise (forged copies, store faults, missing acks): every run can end
    noise_left = data.draw(st.integers(0, 25), label="noise budget")

    def poll() -> None:
        """The relay: committed outbox rows become deliverable."""
        for m in db.outbox_messages():
            if m.message_id not in known:
                known.add(m.message_id)
                msg = StepMessage.from_body(m.body)
                queue.append(msg)
                sent.append(msg)

    deliveries = 0
    while True:
        poll()
        record = db.saga(saga_id)
        assert record is not None
        state = record.state
        if not queue:
            assert state.status.terminal, f"lost saga: {state.status} with nothing queued"
            if state.status is SagaStatus.FAILED and resumes_left:
                resumes_left -= 1
                orch.resume(saga_id, actor="ops", why="retry")
                continue
            break
        deliveries += 1
        assert deliveries < MAX_DELIVERIES, "the run does not end"
        if deliveries == compensate_at:
            try:
                orch.compensate(saga_id, actor="ops", why="cancel")
            except OperatorActionRefused:
                assert state.status is not SagaStatus.RUNNING or any(
                    s.status is StepStatus.DONE for s in state.steps[pivot:]
                )
            continue

        i = data.draw(st.integers(0, len(queue) - 1), label="deliver")
        message = queue[i]
        chaos = data.draw(st.integers(0, 11), label="chaos") if noise_left else 11
        if chaos <= 2:
            noise_left -= 1
        if chaos == 0:
            # a late copy, under a new id, of a message for an earlier attempt or
            # step (or, now and then, for the one awaited: then the copy may win)
            old = data.draw(st.sampled_from(sent), label="forge from")
            body = old.to_body() | {"message_id": f"forged-{next(forged)}"}
            queue.append(StepMessage.from_body(body))
            continue
        if chaos == 1:
            db.fail_begin = 1
        elif chaos == 2:
            db.fail_commits = 1
        before = db.snapshot()
        already_seen = message.message_id in before.inbox
        transient_raised[0] = False
        try:
            outcome_ = orch.handle(message, inline=inline)
        except (StoreUnavailable, Transient):
            seen_outcomes.add("store fault")
            # nothing of the transaction is kept; the message stays for redelivery
            assert db.snapshot() == before
            continue
        finally:
            # an armed fault not hit (a duplicate commits nothing) does not linger
            db.fail_begin = db.fail_commits = 0
        # A step inline after the delivered one that hits a dropped connection is
        # left to its held message; it must never be recorded as a failure.
        assert inline or not transient_raised[0], "a dropped connection was taken for a failure"
        seen_outcomes.add(str(outcome_))
        if already_seen:
            assert outcome_ is Outcome.DUPLICATE
            assert db.snapshot() == before
        else:
            assert outcome_ is not Outcome.DUPLICATE
            assert message.message_id in db.tables.inbox
            if outcome_ is Outcome.APPLIED:
                assert why_not_awaited(state, message.command()) is None
                applied.append(message)
            else:
                assert why_not_awaited(state, message.command()) is not None
                assert db.tables.business == before.business
        if not noise_left or data.draw(st.integers(0, 5), label="acked") != 0:
            queue.pop(i)  # acked; otherwise the broker delivers it again
        else:
            noise_left -= 1

    final = db.saga(saga_id)
    assert final is not None
    status = final.state.status
    note_event(f"ends {status}")
    for seen in sorted(seen_outcomes):
        note_event(f"saw {seen}")
    rows = db.business_rows("effects")
    do_rows = [r["step"] for r in rows if r["phase"] == "do"]
    undo_rows = [r["step"] for r in rows if r["phase"] == "undo"]
    # exactly once per accepted step and compensation, in the right order
    assert len(do_rows) == len(set(do_rows)), f"a step took effect twice: {do_rows}"
    assert len(undo_rows) == len(set(undo_rows)), f"a compensation ran twice: {undo_rows}"
    steps = {s.name: s for s in final.state.steps}
    took_effect = [
        n
        for n, s in steps.items()
        if s.status in (StepStatus.DONE, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)
    ]
    assert sorted(do_rows) == sorted(took_effect)
    assert do_rows == [s.name for s in definition.steps][: len(do_rows)]
    assert sorted(undo_rows) == sorted(
        n for n, s in steps.items() if s.status is StepStatus.COMPENSATED
    )
    assert undo_rows == list(reversed(do_rows))[: len(undo_rows)], "compensations out of order"
    assert not set(undo_rows) & {s.name for s in definition.steps[pivot:]}
    # the rows match the actions that ran and were applied (inline steps have
    # no delivered message: their success is in the history)
    ran_ok = [(m.phase, m.step) for m in applied]
    history = db.tables.history
    ran_ok += [("do", e.detail.get("step")) for e in history if e.kind == "step succeeded"]
    for step in do_rows:
        assert ("do", step) in ran_ok
    for e in history:
        if e.kind in ("step failed", "compensation failed"):
            assert "Transient" not in str(e.detail.get("error")), e
    if status is SagaStatus.COMPLETED:
        assert do_rows == [s.name for s in definition.steps] and undo_rows == []
    elif status is SagaStatus.COMPENSATED:
        assert undo_rows == list(reversed(do_rows))
    else:
        assert status is SagaStatus.FAILED and final.state.reason
    # every step's output was kept exactly for the steps that took effect
    assert set(final.data) == set(do_rows)
    assert all(set(v) == {"attempt"} for v in final.data.values()), final.data
