"""Saga definitions of the chaos run's workers (SAGA_DEFINITIONS=tests.chaos.sagas).

The example order payment exactly as `saga.examples.order_payment_ledger` serves
it (v1, and v2 with the `record_on_ledger` chain step, which new `order-payment`
sagas run), plus version 1's steps under a name of their own, LOCAL: the API
always starts a name's latest version, so local-only sagas need their own name
to go through the same HTTP API beside ledger sagas.
"""

from __future__ import annotations

from saga.core.definitions import Registry, SagaDefinition
from saga.examples import order_payment as op

LOCAL = "order-payment-local"
LEDGER = op.NAME
LEDGER_STEP = "record_on_ledger"

local_definition = SagaDefinition(
    name=LOCAL,
    version=1,
    input_model=op.OrderPayment,
    errors=op.definition.errors,
    steps=op.definition.steps,
)


def register(registry: Registry) -> Registry:
    op.register_with_ledger(registry)
    registry.add(local_definition)
    return registry
