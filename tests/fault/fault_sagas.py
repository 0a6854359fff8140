"""Test-only saga definitions for the fault tests (loaded by real workers through
SAGA_DEFINITIONS=saga.examples.order_payment,tests.fault.fault_sagas).

fault-payment
    The order-payment steps, with a hook that stops one step at a chosen instant
    so a test can SIGKILL the worker exactly there, without any knob in product
    code. The saga's input names the step, the instant and a marker file:

    after_commit     a SQLAlchemy `after_commit` listener on the step's session:
                     the step's transaction (business row, saga state, inbox,
                     outbox) has committed, the task has not returned, so the
                     message is not acked yet.
    in_transaction   inside the action, after its business write, before the
                     unit of work commits.

    `hook_phase` picks the action (do) or the compensation (undo) of the step.
    The first process to get there creates the marker (O_EXCL, so only once per
    marker), writes its pid into it and sleeps; the test SIGKILLs it. A
    redelivery finds the marker taken and runs normally.

fault-payment-stepwise
    The same, every step declared `external`: never fused, so a worker runs the
    following steps inline one transaction each (tests/fault/test_inline_kill.py).

fault-undo
    book_a, book_b, book_c (each compensable), then the pivot `decide` and a
    step after it, `announce`. Switches in the input make `decide` refuse (so
    c, b, a are compensated in that order), make the compensation of book_b
    flaky, fail for good (non-retryable) or spend its attempts, and make
    `announce` flaky or fail for good (after the pivot: retried forward, never
    compensated). Every action and compensation that takes effect appends a row
    to order_payment_events, like the example; a failing compensation writes its
    row and then raises, so the row must be rolled back with its savepoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from saga.core.definitions import Registry, SagaDefinition, Step, StepContext
from saga.core.retry import RetryPolicy
from saga.examples import order_payment as op
from saga.examples.order_payment_tables import order_payment_events

FAULT_PAYMENT = "fault-payment"
FAULT_PAYMENT_STEPWISE = "fault-payment-stepwise"
FAULT_UNDO = "fault-undo"

# How long a hooked step sleeps waiting for its SIGKILL; long enough that a test
# never sees it wake up, bounded so a forgotten process does not live forever.
HANG_SECONDS = 180.0

Hook = Literal["none", "after_commit", "in_transaction"]


class FaultPayment(op.OrderPayment):
    hook: Hook = "none"
    hook_step: str = "record_payment"
    hook_phase: Literal["do", "undo"] = "do"
    marker: str = ""


def claim_marker(marker: str, detail: Mapping[str, Any]) -> bool:
    """Create `marker` once (first caller wins), with `detail` and this pid as JSON."""
    claim = marker + ".claim"
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    tmp = marker + ".tmp"
    Path(tmp).write_text(json.dumps({**detail, "pid": os.getpid(), "at": time.time()}))
    os.replace(tmp, marker)
    return True


def _hang() -> None:
    time.sleep(HANG_SECONDS)


def _hooked(ctx: StepContext, when: Hook, phase: str) -> bool:
    data = ctx.input
    assert isinstance(data, FaultPayment)
    return (
        data.hook == when
        and data.hook_step == ctx.step
        and data.hook_phase == phase
        and bool(data.marker)
    )


def hooked(fn: Any, phase: Literal["do", "undo"]) -> Any:
    """Wrap an order-payment action (phase do) or compensation (undo) with the kill hooks."""
    if fn is None:
        return None

    def action(ctx: StepContext) -> Mapping[str, Any] | None:
        data = ctx.input
        assert isinstance(data, FaultPayment)
        detail = {"saga_id": ctx.saga_id, "step": ctx.step, "phase": phase, "attempt": ctx.attempt}
        if _hooked(ctx, "after_commit", phase):
            session: Session = ctx.session

            def after_commit(committed: Session) -> None:
                # SQLAlchemy also fires after_commit when a savepoint is released
                # (the orchestrator runs the action in one); only the outer
                # COMMIT counts.
                if committed.get_nested_transaction() is not None:
                    return
                if claim_marker(data.marker, {**detail, "hook": "after_commit"}):
                    _hang()

            event.listen(session, "after_commit", after_commit)
        result = fn(ctx)
        if _hooked(ctx, "in_transaction", phase):
            # The business row is written (flushed) but not committed.
            ctx.session.flush()
            if claim_marker(data.marker, {**detail, "hook": "in_transaction"}):
                _hang()
        return result

    action.__name__ = getattr(fn, "__name__", "action")
    return action


def _fault_payment(name: str, *, external: bool) -> SagaDefinition:
    return SagaDefinition(
        name=name,
        version=1,
        input_model=FaultPayment,
        errors=op.definition.errors,
        steps=tuple(
            Step(
                s.name,
                hooked(s.action, "do"),
                compensation=hooked(s.compensation, "undo"),
                pivot=s.pivot,
                retry=s.retry,
                compensation_retry=s.compensation_retry,
                external=external,
            )
            for s in op.definition.steps
        ),
    )


# A worker runs its following local steps inline fused into one transaction...
fault_payment = _fault_payment(FAULT_PAYMENT, external=False)
# ... unless a step is declared external: then one step per transaction, each
# inline step's message held back in the outbox by the transaction before it.
fault_payment_stepwise = _fault_payment(FAULT_PAYMENT_STEPWISE, external=True)


# -- fault-undo ------------------------------------------------------------------


class Refused(Exception):
    """The pivot refuses; everything before it is undone."""


class VaultSealed(Exception):
    """A compensation that can never succeed (non-retryable)."""


class StillBusy(Exception):
    """A retryable failure."""


class UndoInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(min_length=1, max_length=64)
    decide: Literal["accept", "refuse"] = "refuse"
    undo_b: Literal["ok", "flaky", "fails", "exhausted"] = "ok"
    announce: Literal["ok", "flaky", "fails"] = "ok"


def _write(ctx: StepContext, action: str) -> None:
    data = ctx.input
    assert isinstance(data, UndoInput)
    session: Session = ctx.session
    session.execute(
        insert(order_payment_events).values(
            saga_id=ctx.saga_id,
            order_id=data.order_id,
            step=ctx.step,
            action=action,
            amount_cents=1,
        )
    )


def _inp(ctx: StepContext) -> UndoInput:
    assert isinstance(ctx.input, UndoInput)
    return ctx.input


def book_a(ctx: StepContext) -> None:
    _write(ctx, "a")


def undo_a(ctx: StepContext) -> None:
    _write(ctx, "undo_a")


def book_b(ctx: StepContext) -> None:
    _write(ctx, "b")


def undo_b(ctx: StepContext) -> None:
    mode = _inp(ctx).undo_b
    # The row goes in first: a compensation that then fails must leave nothing.
    _write(ctx, "undo_b")
    if mode == "fails":
        raise VaultSealed(f"attempt {ctx.attempt}: vault sealed, cannot undo b (simulated)")
    if mode == "exhausted":
        raise StillBusy(f"attempt {ctx.attempt}: b's ledger busy (simulated)")
    if mode == "flaky" and ctx.attempt <= 2:
        raise StillBusy(f"attempt {ctx.attempt}: b's ledger busy (simulated)")


def book_c(ctx: StepContext) -> None:
    _write(ctx, "c")


def undo_c(ctx: StepContext) -> None:
    _write(ctx, "undo_c")


def decide(ctx: StepContext) -> None:
    if _inp(ctx).decide == "refuse":
        raise Refused(f"order {_inp(ctx).order_id} refused (simulated)")
    _write(ctx, "decide")


def announce(ctx: StepContext) -> None:
    mode = _inp(ctx).announce
    if mode == "fails" or (mode == "flaky" and ctx.attempt <= 2):
        raise StillBusy(f"attempt {ctx.attempt}: announcement bounced (simulated)")
    _write(ctx, "announce")


quick = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2)

fault_undo = SagaDefinition(
    name=FAULT_UNDO,
    version=1,
    input_model=UndoInput,
    errors=(Refused, VaultSealed, StillBusy),
    steps=(
        Step("book_a", book_a, compensation=undo_a, retry=quick, compensation_retry=quick),
        Step(
            "book_b",
            book_b,
            compensation=undo_b,
            retry=quick,
            compensation_retry=RetryPolicy(
                max_attempts=3,
                initial_backoff=0.05,
                max_backoff=0.2,
                non_retryable=("VaultSealed",),
            ),
        ),
        Step("book_c", book_c, compensation=undo_c, retry=quick, compensation_retry=quick),
        Step(
            "decide",
            decide,
            pivot=True,
            retry=RetryPolicy(max_attempts=3, initial_backoff=0.05, non_retryable=("Refused",)),
        ),
        Step("announce", announce, retry=quick),
    ),
)


def register(registry: Registry) -> Registry:
    registry.add(fault_payment)
    registry.add(fault_payment_stepwise)
    registry.add(fault_undo)
    return registry
