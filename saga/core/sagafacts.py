"""Conventions of the sagafacts chaincode (chaincode/README.md), on the client side.

A refusal travels as `CODE:detail` inside the endorse error's text (through a
Fabric Gateway: `chaincode response 409, ALREADY_RECORDED:{...}`); for
ALREADY_RECORDED and ALREADY_REVERSED the detail is the record as JSON.
`GetRecord(key)` answers the record or an empty payload.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

GET_RECORD = "GetRecord"
ALREADY_RECORDED = "ALREADY_RECORDED"
ALREADY_REVERSED = "ALREADY_REVERSED"
# Refusals that depend on the arguments or the ledger's records, not on the
# moment: the same proposal gets the same answer. INTERNAL is left out on
# purpose (a chaincode fault may pass).
BUSINESS_CODES = frozenset(
    {"INVALID_ARGUMENT", "UNKNOWN_FUNCTION", "NOT_FOUND", "NOT_REVERSIBLE", ALREADY_REVERSED}
)
_KNOWN = "|".join(sorted({*BUSINESS_CODES, ALREADY_RECORDED, "INTERNAL"}))
# The code opens the chaincode's message, after the gateway's "chaincode response N, ".
_REFUSAL = re.compile(rf"(?:^|chaincode response \d+, )({_KNOWN}):")


@dataclass(frozen=True)
class Refusal:
    code: str
    detail: str

    def record(self) -> dict[str, Any] | None:
        """The record a refusal carries (ALREADY_RECORDED / ALREADY_REVERSED), if it parses."""
        return parse_record(self.detail.encode())


def parse_refusal(text: str) -> Refusal | None:
    """The chaincode's refusal inside an endorse error's text, if there is one."""
    match = _REFUSAL.search(text)
    if match is None:
        return None
    rest = text[match.end() :]
    if match.group(1) in (ALREADY_RECORDED, ALREADY_REVERSED):
        # The detail is one JSON object; anything the gateway appended after it is not.
        try:
            obj, _ = json.JSONDecoder().raw_decode(rest)
        except ValueError:
            return Refusal(match.group(1), rest)
        return Refusal(match.group(1), json.dumps(obj, sort_keys=True, separators=(",", ":")))
    return Refusal(match.group(1), rest.split("; ", 1)[0])


def parse_record(payload: bytes) -> dict[str, Any] | None:
    """A GetRecord payload: the record, or None for the empty payload (no record)."""
    if not payload.strip():
        return None
    value = json.loads(payload)
    if not isinstance(value, dict):
        raise ValueError(f"sagafacts record is not a JSON object: {payload[:200]!r}")
    return value


def record_txid(record: dict[str, Any]) -> str:
    txid = record.get("txid")
    if not isinstance(txid, str) or not txid:
        raise ValueError(f"sagafacts record has no txid: {record!r}")
    return txid
