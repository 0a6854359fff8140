"""Refusing a request body before it can cost anything: size, nesting, encoding.

Pure functions over bytes, shared by the HTTP API (which reads the body itself
so it can stop at the limit) and the in-process client (which checks the JSON
encoding of the payload it is given), so both refuse the same inputs.

Depth is measured on the raw bytes, before `json.loads`: the standard parser
recurses once per level, so a body of 50,000 `[` would otherwise end in a
RecursionError (or a huge allocation) before any limit could say no.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from saga.core.errors import SagaError

# Any structural character or the start of a string; everything else is skipped
# by the regex engine in C, so a 64 KiB body costs a few hundred iterations.
_TOKEN = re.compile(rb'["\[\]{}]')
# The rest of a string after its opening quote, in the "unrolled loop" form: the
# alternatives cannot overlap, so a string that never closes fails in linear time
# (the naive `(?:[^"\\]+|\\.)*` backtracks exponentially on such input).
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = frozenset(b"[{")


@dataclass(frozen=True)
class PayloadLimits:
    max_bytes: int
    max_depth: int


class BodyRejected(SagaError):
    """A request body refused before it reached the saga's schema."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: tuple[str, ...] = (),
        details: tuple[dict[str, Any], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.details = details


def too_large(size: int, limits: PayloadLimits) -> BodyRejected:
    return BodyRejected(
        413,
        "payload_too_large",
        f"request body is {size} bytes or more; the limit is {limits.max_bytes} bytes "
        "(SAGA_MAX_PAYLOAD_BYTES)",
    )


def check_size(size: int, limits: PayloadLimits) -> None:
    if size > limits.max_bytes:
        raise too_large(size, limits)


def exceeds_depth(raw: bytes, max_depth: int) -> bool:
    """True if arrays/objects in `raw` nest deeper than `max_depth` levels.

    `{}` and `[]` are one level, `{"a": [1]}` two; a bare scalar is zero. Brackets
    inside strings do not count. Stops at the first level too deep, so the cost is
    bounded by the limit, not by how deep an attacker nests. Malformed input is
    measured as far as it makes sense; the JSON parser rejects it afterwards.
    """
    depth = 0
    pos = 0
    search = _TOKEN.search
    rest = _STRING_REST.match
    while True:
        m = search(raw, pos)
        if m is None:
            return False
        char = raw[m.start()]
        pos = m.end()
        if char == 0x22:  # '"'
            s = rest(raw, pos)
            if s is None:
                return False  # an unterminated string: malformed, not deep
            pos = s.end()
        elif char in _OPEN:
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1


def json_depth(value: Any, stop_above: int | None = None) -> int:
    """Nesting depth of an already-parsed JSON value (same counting as exceeds_depth).

    With `stop_above`, returns as soon as the depth passes it: a value that refers
    to itself would otherwise be walked forever.
    """
    # Iterative so that a deep value handed to the in-process client cannot blow
    # the interpreter's recursion limit while being measured.
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            level += 1
            stack.extend((v, level) for v in item.values())
        elif isinstance(item, list | tuple):
            level += 1
            stack.extend((v, level) for v in item)
        deepest = max(deepest, level)
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


def _reject_constant(name: str) -> Any:
    # PostgreSQL's jsonb has no NaN or Infinity, and RFC 8259 has none either.
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # With duplicates, which value "wins" differs between parsers; a caller and
    # this service could then disagree on what was enqueued.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _bad_text(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first string (key or value) that cannot be stored as text, and why."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return where or "(body)", "contains a NUL character (\\u0000)"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or "(body)", "contains a lone UTF-16 surrogate escape"
        elif isinstance(item, dict):
            for k, v in item.items():
                key_path = f"{where}.{k}" if where else str(k)
                stack.append((k, key_path))
                stack.append((v, key_path))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def parse_body(raw: bytes, limits: PayloadLimits, *, envelope_levels: int = 0) -> Any:
    """Check and parse a JSON request body; raise BodyRejected with the reason.

    `envelope_levels` is the nesting the request adds around the payload itself
    (1 for `{"saga": ..., "payload": {...}}`), so the configured depth limit
    means the same thing for the payload whether it arrives wrapped or not.
    """
    check_size(len(raw), limits)
    max_depth = limits.max_depth + envelope_levels
    if exceeds_depth(raw, max_depth):
        raise BodyRejected(
            413,
            "payload_too_deep",
            f"payload nests arrays/objects more than {limits.max_depth} levels deep "
            "(SAGA_MAX_PAYLOAD_DEPTH)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRejected(
            400, "invalid_utf8", f"request body is not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        value = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except (ValueError, RecursionError) as exc:
        raise BodyRejected(
            400, "malformed_json", f"request body is not valid JSON: {exc}"
        ) from None
    bad = _bad_text(value)
    if bad is not None:
        where, why = bad
        raise BodyRejected(
            422, "invalid_text", f"string at {where} {why}, which cannot be stored", (where,)
        )
    return value


def check_value(value: Any, limits: PayloadLimits, *, field_prefix: str = "") -> bytes:
    """The in-process counterpart of parse_body: refuse what the HTTP API refuses.

    Returns the compact JSON encoding that was measured. `field_prefix` names the
    value in error paths (`payload` gives `payload.order_id`).
    """
    if json_depth(value, stop_above=limits.max_depth) > limits.max_depth:
        raise BodyRejected(
            413,
            "payload_too_deep",
            f"payload nests arrays/objects more than {limits.max_depth} levels deep "
            "(SAGA_MAX_PAYLOAD_DEPTH)",
        )
    bad = _bad_text(value, field_prefix)
    if bad is not None:
        where, why = bad
        raise BodyRejected(
            422, "invalid_text", f"string at {where} {why}, which cannot be stored", (where,)
        )
    try:
        raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BodyRejected(
            422,
            "invalid_payload",
            f"payload is not JSON-serialisable: {exc}",
            (field_prefix or "(body)",),
        ) from None
    data = raw.encode("utf-8")
    check_size(len(data), limits)
    return data
