"""Saga definitions of the chaos run's workers (SAGA_DEFINITIONS=tests.chaos.sagas).

The example order payment as `saga.examples.order_payment_ledger` serves it:
v1, and v2 with the `record_on_ledger` chain step, which new `order-payment`
sagas run (its ledger step here has a retry budget that outlasts the injected
outages). Plus version 1's steps under a name of their own, LOCAL: the API
always starts a name's latest version, so local-only sagas need their own name
to go through the same HTTP API beside ledger sagas.
"""

from __future__ import annotations

from dataclasses import replace

from saga.core.definitions import Registry, SagaDefinition
from saga.core.retry import RetryPolicy
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


# The example's ledger step gives up after 5 tries within about 10 s. An
# unreachable ledger before any attempt is not in doubt, so giving up compensates
# the saga: correct, but the scenario expects a plain payment to complete, and a
# devnet kill plus restart under CI load can last longer than that. The budget
# here outlasts the longest outage the run injects (about two minutes).
_OUTAGE_PROOF = RetryPolicy(
    max_attempts=12, initial_backoff=0.5, max_backoff=20.0, non_retryable=("ChaincodeRefused",)
)
ledger_definition = SagaDefinition(
    name=LEDGER,
    version=op.definition_v2.version,
    input_model=op.definition_v2.input_model,
    errors=op.definition_v2.errors,
    steps=tuple(
        replace(s, retry=_OUTAGE_PROOF, compensation_retry=replace(_OUTAGE_PROOF, non_retryable=()))
        if s.name == LEDGER_STEP
        else s
        for s in op.definition_v2.steps
    ),
)


def register(registry: Registry) -> Registry:
    registry.add(op.definition)
    registry.add(ledger_definition)
    registry.add(local_definition)
    return registry
