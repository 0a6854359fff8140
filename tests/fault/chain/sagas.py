"""Saga definitions the chain fault workers load (SAGA_DEFINITIONS=tests.fault.chain.sagas).

The example order payment, v1 and v2 (v2 is what new `order-payment` sagas run,
exactly as `saga.examples.order_payment_ledger` serves it), plus one copy of v2
under its own name whose ledger step times out after SHORT_TIMEOUT seconds: the
cell "commit delayed beyond the step timeout" needs a delay longer than the
step's timeout, and the example's 30 s would cost the matrix half a minute.
"""

from __future__ import annotations

from dataclasses import replace

from saga.core.definitions import Registry, SagaDefinition
from saga.examples import order_payment as op

SHORT = "order-payment-short-timeout"
SHORT_TIMEOUT = 3.0
LEDGER_STEP = "record_on_ledger"

short_definition = SagaDefinition(
    name=SHORT,
    version=1,
    input_model=op.OrderPayment,
    errors=op.definition_v2.errors,
    steps=tuple(
        replace(s, timeout=SHORT_TIMEOUT) if s.name == LEDGER_STEP else s
        for s in op.definition_v2.steps
    ),
)


def register(registry: Registry) -> Registry:
    op.register_with_ledger(registry)
    registry.add(short_definition)
    return registry
