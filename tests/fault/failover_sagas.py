"""The order-payment saga with two-second step timeouts (the failover tests' sagas).

Loaded by real workers through SAGA_DEFINITIONS=...,tests.fault.failover_sagas.
Same steps and business rows as saga.examples.order_payment; only the timeouts
are short, so the sweeper re-drives a saga that lost its progress in an
asynchronous failover within seconds rather than after the example's 30.
"""

from __future__ import annotations

from dataclasses import replace

from saga.core.definitions import Registry
from saga.examples import order_payment as op

NAME = "failover-payment"
STEP_TIMEOUT = 2.0

definition = replace(
    op.definition,
    name=NAME,
    steps=tuple(replace(step, timeout=STEP_TIMEOUT) for step in op.definition.steps),
)


def register(registry: Registry) -> Registry:
    registry.add(definition)
    return registry
