"""The naive baseline of the chaos run (SAGA_DEFINITIONS=tests.chaos.naive_sagas).

The same sagas as tests.chaos.sagas, except that version 2's ledger step is what
an application without the chain step protocol writes: a LOCAL step whose action
endorses, submits and waits for the commit of a NEW transaction on every try,
under a fresh idempotency key (one per call, as an application keying its ledger
writes by request would), with nothing stored before Submit and nothing asked of
the ledger before a retry. Its retry policy is the real step's. A worker killed
after Submit, a lost reply, a devnet restart mid-wait: the retry records the
payment again. The compensation reverses the one payment the saga knows of (the
key its last successful try returned), so the extra payments are never reversed.

Keys: ``naive/<saga id>/do/<uuid>`` and ``naive/<saga id>/undo/<uuid>``; the
chaos run counts VALID transactions per saga by these prefixes.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import Any

from saga.adapters.fabric import GatewayClient, SigningIdentity, load_connection_profile
from saga.config import Settings
from saga.core.definitions import Registry, SagaDefinition, Step, StepContext
from saga.examples import order_payment as op
from saga.ports.ledger import LedgerError
from tests.chaos.sagas import LEDGER_STEP, ledger_definition, local_definition

PREFIX = "naive"
COMMIT_WAIT = 20.0

_lock = threading.Lock()
_client: tuple[GatewayClient, str] | None = None


class NaiveLedgerError(Exception):
    """The naive step's transaction did not commit VALID (or its outcome is unknown)."""


def naive_key(saga_id: str, purpose: str) -> str:
    return f"{PREFIX}/{saga_id}/{purpose}/{uuid.uuid4().hex}"


def _gateway() -> tuple[GatewayClient, str]:
    """One client per process, made on first use (after a prefork worker forked)."""
    global _client
    with _lock:
        if _client is None:
            settings = Settings.from_env()
            profile = load_connection_profile(settings.fabric_profile)
            identity = SigningIdentity.from_msp_dir(profile.msp_id, settings.fabric_msp_dir)
            _client = (
                GatewayClient.connect(profile.endpoint(), identity),
                settings.fabric_channel,
            )
        return _client


def _endorse_submit_wait(function: str, args: list[str]) -> None:
    client, channel = _gateway()
    try:
        prepared = client.prepare(channel, op.CHAINCODE, function, args)
        client.submit(prepared)
        result = client.commit_status(channel, prepared.txid, timeout=COMMIT_WAIT)
    except LedgerError as exc:
        raise NaiveLedgerError(f"{function}: {type(exc).__name__}: {exc}") from None
    if not result.valid:
        raise NaiveLedgerError(f"{function} {prepared.txid} committed {result.code_name}")


def record_on_ledger(ctx: StepContext) -> Mapping[str, Any]:
    key = naive_key(ctx.saga_id, "do")
    _endorse_submit_wait("RecordPayment", [key, *op.payment_args(ctx)])
    return {"naive_ledger_key": key}


def reverse_on_ledger(ctx: StepContext) -> None:
    original = (ctx.data.get(LEDGER_STEP) or {}).get("naive_ledger_key")  # the step's output
    if not original:
        return  # the saga never learned of a payment: nothing it knows to reverse
    undo = naive_key(ctx.saga_id, "undo")
    _endorse_submit_wait("ReversePayment", [undo, str(original), *op.reversal_args(ctx)])


def _steps() -> tuple[Step, ...]:
    # Same retry budget as ours, so both runs meet the same outages alike.
    ours = ledger_definition.step(LEDGER_STEP)
    naive = Step(
        LEDGER_STEP,
        record_on_ledger,
        compensation=reverse_on_ledger,
        retry=ours.retry,
        compensation_retry=ours.compensation_retry,
    )
    return tuple(naive if s.name == LEDGER_STEP else s for s in op.definition_v2.steps)


naive_definition_v2 = SagaDefinition(
    name=op.NAME,
    version=2,
    input_model=op.OrderPayment,
    errors=(*op.definition_v2.errors, NaiveLedgerError),
    steps=_steps(),
)


def register(registry: Registry) -> Registry:
    registry.add(op.definition)
    registry.add(naive_definition_v2)
    registry.add(local_definition)
    return registry
