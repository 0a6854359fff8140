"""A saga for the console's tests (SAGA_DEFINITIONS=tests.support.shipment_saga): a local step,
the pivot on the ledger (sagafacts RecordPayment), then a local step that fails
for good while CARRIER is closed, which leaves the saga FAILED for an operator."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from saga.app.chain import ChaincodeRefused
from saga.core.definitions import ChainCall, Registry, SagaDefinition, Step, StepContext, StepKind
from saga.core.retry import RetryPolicy

NAME = "shipment"
CARRIER = threading.Event()


class Shipment(BaseModel):
    order_id: str
    customer_id: str
    amount_cents: int


class CarrierDown(Exception):
    pass


def _input(ctx: StepContext) -> Shipment:
    assert isinstance(ctx.input, Shipment)
    return ctx.input


def pack(ctx: StepContext) -> Mapping[str, Any]:
    return {"parcel": f"p-{_input(ctx).order_id}"}


def unpack(ctx: StepContext) -> None:
    return None


def _record_args(ctx: StepContext) -> list[str]:
    s = _input(ctx)
    return [s.order_id, str(s.amount_cents), "EUR", s.customer_id]


def ship(ctx: StepContext) -> Mapping[str, Any]:
    if not CARRIER.is_set():
        raise CarrierDown(f"carrier API refused parcel p-{_input(ctx).order_id}: 503")
    return {"tracking": f"t-{_input(ctx).order_id}"}


definition = SagaDefinition(
    name=NAME,
    version=1,
    input_model=Shipment,
    errors=(CarrierDown, ChaincodeRefused),
    steps=(
        Step("pack", pack, compensation=unpack),
        Step(
            "record_on_ledger",
            kind=StepKind.CHAIN,
            chain=ChainCall(
                "sagafacts",
                "RecordPayment",
                _record_args,
            ),
            retry=RetryPolicy(
                max_attempts=3, initial_backoff=0.2, non_retryable=("ChaincodeRefused",)
            ),
            pivot=True,
        ),
        Step("ship", ship, retry=RetryPolicy(max_attempts=1, non_retryable=("CarrierDown",))),
    ),
)


def register(registry: Registry) -> Registry:
    registry.add(definition)
    return registry
