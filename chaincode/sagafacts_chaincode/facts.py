"""The sagas' business facts on the ledger, independent of the chaincode shim.

Every write is keyed by an idempotency key that the orchestrator derives from
(saga id, step, purpose). A write function reads its key first and refuses
with ``ALREADY_RECORDED:<record json>`` if the key is taken, otherwise writes
the record under it. Because the key is both read and written, Fabric's MVCC
validation lets at most one transaction per key become VALID even when several
were endorsed before any committed.

Records are canonical JSON (sorted keys, no spaces) built only from the
proposal (arguments, txid, proposal timestamp, creator MSP), never from the
endorsing peer's clock or randomness: every endorser must produce the same
write set, or the endorsement policy cannot be met.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

# Response statuses. A Fabric endorser treats any status >= 400 as a refusal.
OK = 200
BAD_REQUEST = 400
CONFLICT = 409
INTERNAL = 500

RECORD_PREFIX = "record:"
MAX_KEY_LEN = 256
MAX_TEXT_LEN = 256
MAX_FACT_BYTES = 16 * 1024
MAX_AMOUNT_CENTS = 10**15

KIND_PAYMENT = "payment"
KIND_PAYMENT_REVERSAL = "payment_reversal"
KIND_FACT = "fact"
KIND_FACT_REVERSAL = "fact_reversal"
REVERSAL_OF = {KIND_PAYMENT: KIND_PAYMENT_REVERSAL, KIND_FACT: KIND_FACT_REVERSAL}

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=\-]*")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_CENTS_RE = re.compile(r"0|[1-9][0-9]*")
_FACT_TYPE_RE = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")


class Refusal(Exception):
    """The chaincode refuses the call; becomes an error Response ``CODE:detail``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}:{detail}")
        self.status = status
        self.code = code
        self.detail = detail

    @property
    def message(self) -> str:
        return f"{self.code}:{self.detail}"


def invalid(detail: str) -> Refusal:
    return Refusal(BAD_REQUEST, "INVALID_ARGUMENT", detail)


class State(Protocol):
    """The world state of this chaincode's namespace, as the peer simulates it."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...


@dataclass(frozen=True)
class TxInfo:
    """What the proposal says about the transaction being simulated."""

    txid: str
    timestamp: str  # RFC 3339, from the proposal's channel header
    creator_msp: str


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def check_key(name: str, value: str) -> str:
    if not value:
        raise invalid(f"{name} must not be empty")
    if len(value) > MAX_KEY_LEN:
        raise invalid(f"{name} is longer than {MAX_KEY_LEN} characters")
    if not _KEY_RE.fullmatch(value):
        raise invalid(
            f"{name} {value!r} may only contain letters, digits and ._:/@+=- "
            "and must start with a letter or digit"
        )
    return value


def check_text(name: str, value: str, *, required: bool = True) -> str:
    if required and not value.strip():
        raise invalid(f"{name} must not be empty")
    if len(value) > MAX_TEXT_LEN:
        raise invalid(f"{name} is longer than {MAX_TEXT_LEN} characters")
    if any(ord(c) < 0x20 for c in value):
        raise invalid(f"{name} must not contain control characters")
    return value


def check_amount_cents(value: str) -> int:
    if not _CENTS_RE.fullmatch(value):
        raise invalid(f"amount_cents {value!r} must be a whole number of minor units, e.g. 1250")
    cents = int(value)
    if cents <= 0:
        raise invalid("amount_cents must be greater than zero")
    if cents > MAX_AMOUNT_CENTS:
        raise invalid(f"amount_cents must be at most {MAX_AMOUNT_CENTS}")
    return cents


def check_currency(value: str) -> str:
    if not _CURRENCY_RE.fullmatch(value):
        raise invalid(f"currency {value!r} must be an ISO 4217 code of three capital letters")
    return value


def check_arity(function: str, args: list[str], names: list[str], optional: int = 0) -> None:
    least = len(names) - optional
    if not least <= len(args) <= len(names):
        expected = ", ".join(names[:least] + [f"[{n}]" for n in names[least:]])
        raise invalid(f"{function} takes ({expected}), got {len(args)} argument(s)")


def state_key(idem_key: str) -> str:
    return RECORD_PREFIX + idem_key


async def load(state: State, idem_key: str) -> dict[str, Any] | None:
    raw = await state.get(state_key(idem_key))
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise Refusal(INTERNAL, "INTERNAL", f"record {idem_key!r} is not JSON") from exc
    if not isinstance(record, dict):
        raise Refusal(INTERNAL, "INTERNAL", f"record {idem_key!r} is not a JSON object")
    return record


async def _claim(state: State, idem_key: str) -> None:
    existing = await load(state, idem_key)
    if existing is not None:
        raise Refusal(CONFLICT, "ALREADY_RECORDED", canonical(existing).decode())


def _new_record(
    tx: TxInfo, idem_key: str, kind: str, data: dict[str, Any], reverses: str | None
) -> dict[str, Any]:
    return {
        "key": idem_key,
        "kind": kind,
        "data": data,
        "reverses": reverses,
        "reversed_by": None,
        "txid": tx.txid,
        "recorded_at": tx.timestamp,
        "recorded_by": tx.creator_msp,
    }


async def record_payment(state: State, tx: TxInfo, args: list[str]) -> bytes:
    check_arity(
        "RecordPayment",
        args,
        ["idem_key", "order_id", "amount_cents", "currency", "customer_id"],
        optional=1,
    )
    idem_key = check_key("idem_key", args[0])
    data = {
        "order_id": check_text("order_id", args[1]),
        "amount_cents": check_amount_cents(args[2]),
        "currency": check_currency(args[3]),
        "customer_id": check_text("customer_id", args[4], required=False) if len(args) > 4 else "",
    }
    await _claim(state, idem_key)
    record = _new_record(tx, idem_key, KIND_PAYMENT, data, None)
    body = canonical(record)
    await state.put(state_key(idem_key), body)
    return body


async def record_fact(state: State, tx: TxInfo, args: list[str]) -> bytes:
    check_arity("RecordFact", args, ["idem_key", "fact_type", "fact_json"])
    idem_key = check_key("idem_key", args[0])
    fact_type = args[1]
    if not _FACT_TYPE_RE.fullmatch(fact_type):
        raise invalid(f"fact_type {fact_type!r} must match {_FACT_TYPE_RE.pattern}")
    if len(args[2].encode()) > MAX_FACT_BYTES:
        raise invalid(f"fact_json is larger than {MAX_FACT_BYTES} bytes")
    try:
        fact = json.loads(args[2])
    except ValueError as exc:
        raise invalid(f"fact_json is not valid JSON: {exc}") from None
    if not isinstance(fact, dict):
        raise invalid("fact_json must be a JSON object")
    await _claim(state, idem_key)
    record = _new_record(tx, idem_key, KIND_FACT, {"type": fact_type, "fact": fact}, None)
    body = canonical(record)
    await state.put(state_key(idem_key), body)
    return body


async def _reverse(
    state: State, tx: TxInfo, function: str, args: list[str], kinds: tuple[str, ...]
) -> bytes:
    check_arity(function, args, ["idem_key", "original_key", "reason"], optional=1)
    idem_key = check_key("idem_key", args[0])
    original_key = check_key("original_key", args[1])
    reason = check_text("reason", args[2], required=False) if len(args) > 2 else ""
    if idem_key == original_key:
        raise invalid("idem_key of a reversal must differ from original_key")
    # The reversal's own key first: a retried reversal gets its own record back.
    await _claim(state, idem_key)
    original = await load(state, original_key)
    if original is None:
        raise Refusal(404, "NOT_FOUND", f"no record under original_key {original_key!r}")
    kind = original.get("kind")
    if kind not in kinds:
        raise Refusal(
            CONFLICT,
            "NOT_REVERSIBLE",
            f"record {original_key!r} is a {kind!r}; {function} reverses {' or '.join(kinds)}",
        )
    if original.get("reversed_by"):
        raise Refusal(CONFLICT, "ALREADY_REVERSED", canonical(original).decode())
    data = dict(original.get("data") or {})
    data["reason"] = reason
    reversal = _new_record(tx, idem_key, REVERSAL_OF[str(kind)], data, original_key)
    # Writing the original as well makes two reversals of one record under
    # different keys conflict (MVCC) instead of both succeeding.
    original["reversed_by"] = idem_key
    await state.put(state_key(original_key), canonical(original))
    body = canonical(reversal)
    await state.put(state_key(idem_key), body)
    return body


async def reverse_payment(state: State, tx: TxInfo, args: list[str]) -> bytes:
    return await _reverse(state, tx, "ReversePayment", args, (KIND_PAYMENT,))


async def reverse_fact(state: State, tx: TxInfo, args: list[str]) -> bytes:
    return await _reverse(state, tx, "ReverseFact", args, (KIND_FACT,))


async def get_record(state: State, tx: TxInfo, args: list[str]) -> bytes:
    """The record under a key, or an empty payload if there is none."""
    check_arity("GetRecord", args, ["idem_key"])
    record = await load(state, check_key("idem_key", args[0]))
    return b"" if record is None else canonical(record)


FUNCTIONS = {
    "RecordPayment": record_payment,
    "ReversePayment": reverse_payment,
    "RecordFact": record_fact,
    "ReverseFact": reverse_fact,
    "GetRecord": get_record,
}
