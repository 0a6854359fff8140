"""The example saga: an order payment recorded in the service's own database,
and (version 2) on the ledger.

Steps:

    reserve_funds    -> compensation release_funds
    record_payment   -> compensation void_payment
    record_on_ledger -> compensation ReversePayment     (v2 only; a chain step on sagafacts)
    confirm_order       pivot: the order is promised to the customer
    notify_customer     after the pivot: retried forward, never compensated

Version 1 stays registered, unchanged, for sagas started before v2 existed.
`register(registry)` adds only v1, so a deployment without a ledger (the demo,
the defaults) keeps running; `register_with_ledger` adds v1 and v2, and new
sagas get v2 (the latest). `saga.examples.order_payment_ledger` is the module to
name in SAGA_DEFINITIONS for that.

Every business write appends a row to `order_payment_events`, which has no
uniqueness constraint on purpose: a step that took effect twice shows up as two
rows, which is what the fault tests count.

`simulate` is the failure switch of the demo: `decline_payment` fails
`record_payment` for good (reserve_funds is compensated), `reject_order` fails the
pivot (payment voided, then funds released, in that order), `flaky_notify` fails
the notification twice before it goes through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from saga.app.chain.errors import ChaincodeRefused
from saga.core.definitions import ChainCall, Registry, SagaDefinition, Step, StepContext, StepKind
from saga.core.retry import RetryPolicy
from saga.examples.order_payment_tables import order_payment_events

NAME = "order-payment"


class PaymentDeclined(Exception):
    """The payment cannot be recorded; retrying will not help."""


class OrderRejected(Exception):
    """The order cannot be confirmed; everything before it must be undone."""


class CustomerUnreachable(Exception):
    """The notification could not be delivered this time."""


class OrderPayment(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    order_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(gt=0, le=10_000_000_00)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    simulate: Literal["none", "decline_payment", "reject_order", "flaky_notify"] = "none"


def _record(ctx: StepContext, action: str) -> None:
    payment = ctx.input
    assert isinstance(payment, OrderPayment)
    session: Session = ctx.session
    session.execute(
        insert(order_payment_events).values(
            saga_id=ctx.saga_id,
            order_id=payment.order_id,
            step=ctx.step,
            action=action,
            amount_cents=payment.amount_cents,
        )
    )


def _input(ctx: StepContext) -> OrderPayment:
    assert isinstance(ctx.input, OrderPayment)
    return ctx.input


def reserve_funds(ctx: StepContext) -> Mapping[str, Any]:
    _record(ctx, "reserve")
    return {"reserved_cents": _input(ctx).amount_cents}


def release_funds(ctx: StepContext) -> None:
    _record(ctx, "release")


def record_payment(ctx: StepContext) -> Mapping[str, Any]:
    if _input(ctx).simulate == "decline_payment":
        raise PaymentDeclined(f"card for order {_input(ctx).order_id} declined (simulated)")
    _record(ctx, "payment")
    return {"payment_ref": f"pay-{ctx.saga_id[:8]}"}


def void_payment(ctx: StepContext) -> None:
    _record(ctx, "void")


def confirm_order(ctx: StepContext) -> None:
    if _input(ctx).simulate == "reject_order":
        raise OrderRejected(f"order {_input(ctx).order_id} rejected (simulated)")
    _record(ctx, "confirm")


def notify_customer(ctx: StepContext) -> None:
    if _input(ctx).simulate == "flaky_notify" and ctx.attempt <= 2:
        raise CustomerUnreachable(f"attempt {ctx.attempt}: mail server busy (simulated)")
    _record(ctx, "notify")


fast = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=1.0)

definition = SagaDefinition(
    name=NAME,
    version=1,
    input_model=OrderPayment,
    errors=(PaymentDeclined, OrderRejected, CustomerUnreachable),
    steps=(
        Step("reserve_funds", reserve_funds, compensation=release_funds, retry=fast),
        Step(
            "record_payment",
            record_payment,
            compensation=void_payment,
            retry=RetryPolicy(
                max_attempts=3,
                initial_backoff=0.05,
                non_retryable=("PaymentDeclined",),
            ),
        ),
        Step(
            "confirm_order",
            confirm_order,
            pivot=True,
            retry=RetryPolicy(
                max_attempts=3, initial_backoff=0.05, non_retryable=("OrderRejected",)
            ),
        ),
        Step(
            "notify_customer",
            notify_customer,
            retry=RetryPolicy(max_attempts=10, initial_backoff=0.05, max_backoff=0.5),
        ),
    ),
)


CHAINCODE = "sagafacts"


def payment_args(ctx: StepContext) -> list[str]:
    """RecordPayment(idem_key, order_id, amount_cents, currency, customer_id) after the key."""
    payment = _input(ctx)
    return [payment.order_id, str(payment.amount_cents), payment.currency, payment.customer_id]


def reversal_args(ctx: StepContext) -> list[str]:
    """ReversePayment(idem_key, original_key, reason) after the two keys."""
    return [f"saga {ctx.saga_id} compensated"]


def _steps_v2() -> tuple[Step, ...]:
    v1 = definition.steps
    ledger = Step(
        "record_on_ledger",
        kind=StepKind.CHAIN,
        chain=ChainCall(
            CHAINCODE,
            "RecordPayment",
            payment_args,
            undo_function="ReversePayment",
            undo_args=reversal_args,
        ),
        retry=RetryPolicy(
            max_attempts=5,
            initial_backoff=0.5,
            max_backoff=5.0,
            non_retryable=("ChaincodeRefused",),
        ),
        compensation_retry=RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=5.0),
    )
    return (*v1[:2], ledger, *v1[2:])


definition_v2 = SagaDefinition(
    name=NAME,
    version=2,
    input_model=OrderPayment,
    errors=(PaymentDeclined, OrderRejected, CustomerUnreachable, ChaincodeRefused),
    steps=_steps_v2(),
)


def register(registry: Registry) -> Registry:
    registry.add(definition)
    return registry


def register_with_ledger(registry: Registry) -> Registry:
    registry.add(definition)
    registry.add(definition_v2)
    return registry


def effects(session: Session, saga_id: str) -> list[str]:
    """The business actions recorded for one saga, in order (for tests and audits)."""
    rows = session.execute(
        select(order_payment_events.c.action)
        .where(order_payment_events.c.saga_id == saga_id)
        .order_by(order_payment_events.c.id)
    )
    return [r[0] for r in rows]
