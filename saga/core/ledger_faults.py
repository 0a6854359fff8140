"""What a failed ledger call means, read from its gRPC code and the gateway's words.

Pure: the Fabric adapter hands in the code's *name* and the texts; nothing here
imports gRPC. The table is ordered, first match wins. Every text in it was seen
from a real Fabric 2.5 gateway (FABRIC-FACTS.md, the differential test in
tests/fabric/real/) or is written by fabric's internal/pkg/gateway for the case.

Four kinds, four reactions (DESIGN.md, guarantee 7):

- REFUSED: the chaincode itself answered no. Trying the same proposal again gets
  the same answer; the step's business retry policy decides.
- REJECTED: a definite protocol rejection (bad signature, policy, duplicate txid).
  Also spends the business retries: the transaction as built will not go through.
- MISCONFIGURED: this process asks the wrong channel or chaincode, or its identity
  is not allowed. No retry helps until someone changes a setting: the saga goes to
  an operator at once, and nothing is compensated.
- UNAVAILABLE: a peer, chaincode or orderer is away, or no endorsement combination
  can be formed right now. The step waits under its outage budget; it never spends
  a business retry and never starts a compensation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class FaultKind(StrEnum):
    REFUSED = "refused"
    REJECTED = "rejected"
    MISCONFIGURED = "misconfigured"
    UNAVAILABLE = "unavailable"


class Operation(StrEnum):
    ENDORSE = "endorse"
    SUBMIT = "submit"
    COMMIT_STATUS = "commit status"
    EVALUATE = "evaluate"
    CONNECT = "connect"


@dataclass(frozen=True, slots=True)
class LedgerFault:
    kind: FaultKind
    # One line for operators: what it means and, for a misconfiguration, what to check.
    meaning: str


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: FaultKind
    meaning: str
    # Lower-case fragments (regular expressions); the rule matches when any occurs
    # in the call's texts.
    texts: tuple[str, ...] = ()
    # gRPC code names the rule is limited to; empty: any code.
    codes: frozenset[str] = frozenset()
    operations: frozenset[Operation] = frozenset()
    _pattern: re.Pattern[str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.texts:
            object.__setattr__(self, "_pattern", re.compile("|".join(self.texts)))

    def matches(self, operation: Operation, code: str, text: str) -> bool:
        if self.codes and code not in self.codes:
            return False
        if self.operations and operation not in self.operations:
            return False
        return self._pattern is None or self._pattern.search(text) is not None


_CHANNEL = "check SAGA_FABRIC_CHANNEL (and the saga's chain channel) against the peer's channels"
_CHAINCODE = (
    "the chaincode is not defined on the channel: check the saga's chaincode name and that "
    "it is committed (peer lifecycle chaincode querycommitted)"
)
_IDENTITY = (
    "the peer refuses this client identity: check SAGA_FABRIC_MSP_ID and SAGA_FABRIC_MSP_DIR "
    "(and the channel's Readers/Writers policies)"
)

# Order matters: the specific texts first, then the fallbacks by code alone.
RULES: tuple[_Rule, ...] = (
    # The chaincode answered: a 4xx is its refusal; a 5xx its own error, which may
    # pass (a retry of the step's policy), but is no outage of the network.
    _Rule(FaultKind.REFUSED, "the chaincode refused the proposal", (r"chaincode response 4\d\d",)),
    _Rule(
        FaultKind.REJECTED,
        "the chaincode failed while simulating the proposal",
        (r"chaincode response \d+",),
    ),
    # A misconfiguration hidden under an availability code: no metadata means the
    # chaincode is not defined on the channel, whatever the peers' health.
    _Rule(
        FaultKind.MISCONFIGURED,
        _CHAINCODE,
        (
            "no metadata was found for chaincode",
            r"chaincode definition for \S+ not found",
            r"make sure the chaincode \S+ has been successfully defined",
        ),
    ),
    _Rule(
        FaultKind.MISCONFIGURED,
        _CHANNEL,
        (
            "failed to get config for channel",
            "channel does not exist",
            r"channel '[^']*' not found",
            "no such channel",
            "unknown channel",
        ),
    ),
    _Rule(
        FaultKind.MISCONFIGURED,
        _IDENTITY,
        ("access denied", "creator org unknown", "is not a member of channel"),
    ),
    _Rule(
        FaultKind.REJECTED,
        "a transaction with this id is already on the ledger",
        ("duplicate transaction found",),
    ),
    # The orderer took the envelope and said no for good.
    _Rule(
        FaultKind.REJECTED,
        "the orderer refused the transaction (signature or channel Writers policy)",
        (r"status=forbidden", r"status=bad_request"),
    ),
    _Rule(
        FaultKind.UNAVAILABLE,
        "the ordering service has no leader or cannot take transactions now",
        (
            "status=service_unavailable",
            "no orderer nodes available",
            "no orderers could successfully process",
            "insufficient number of orderers",
            "no raft leader",
        ),
    ),
    _Rule(
        FaultKind.UNAVAILABLE,
        "a peer or the chaincode is unreachable, or too few endorsers are up",
        (
            "could not launch chaincode",
            "connection refused",
            "error creating grpc connection",
            "failed to collect enough transaction endorsements",
            "no combination of peers can be derived",
            "unavailability of peers",
            "failed to find any endorsing peers",
            "no peers available to evaluate chaincode",
            "stream terminated",
            "timeout expired",
            "deadline exceeded",
            "transport is closing",
            "connection reset",
            "broken pipe",
        ),
    ),
    _Rule(
        FaultKind.UNAVAILABLE,
        "the gateway could not be reached or did not answer in time",
        codes=frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"}),
    ),
    _Rule(
        FaultKind.MISCONFIGURED,
        _IDENTITY,
        codes=frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"}),
    ),
    _Rule(
        FaultKind.MISCONFIGURED,
        "the endpoint is not a Fabric Gateway (check SAGA_FABRIC_PROFILE / SAGA_FABRIC_PEER, "
        "and that the peer runs with the gateway enabled)",
        codes=frozenset({"UNIMPLEMENTED"}),
    ),
    _Rule(FaultKind.MISCONFIGURED, _CHANNEL, codes=frozenset({"NOT_FOUND"})),
)

_DEFAULT = LedgerFault(FaultKind.REJECTED, "the ledger rejected the call")


def classify(
    operation: Operation | str,
    code: str | None,
    message: str = "",
    details: Iterable[str] = (),
) -> LedgerFault:
    """The kind of a failed ledger call: `code` is a gRPC status code's name (or None)."""
    op = Operation(operation)
    text = " ".join((message, *details)).lower()
    name = (code or "UNKNOWN").upper()
    for rule in RULES:
        if rule.matches(op, name, text):
            return LedgerFault(rule.kind, rule.meaning)
    return _DEFAULT
