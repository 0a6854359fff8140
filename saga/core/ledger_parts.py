"""Which part of a Fabric network a failed call shows to be down, from the gateway's words.

Pure, like saga.core.ledger_faults (which says what a failure *means* for a step):
this says *where* to look, so that an operator reading a step's error or `saga
ledger ping` knows whether to start the chaincode, a peer of another org, an
orderer, or the gateway peer itself. The texts matched were seen from a real
Fabric 2.5.16 gateway (FABRIC-FACTS.md; tests/fabric/real/).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Part(StrEnum):
    GATEWAY_PEER = "gateway peer"
    CHAINCODE = "chaincode"
    ENDORSING_PEER = "another organisation's peer"
    ORDERER = "orderer"


class Said(Protocol):
    """One peer's or orderer's words (saga.adapters.fabric.ErrorDetail fits)."""

    @property
    def address(self) -> str: ...

    @property
    def msp_id(self) -> str: ...

    @property
    def message(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PartDown:
    part: Part
    # One sentence naming the part and, where the gateway said it, its address.
    says: str


# "could not launch chaincode sagafacts_1.0:<hash>: ... error creating grpc connection to
# 127.0.0.1:34241: ... connect: connection refused": a chaincode server that is not running.
_LAUNCH = re.compile(r"could not launch chaincode ([^\s:]+)")
_DIALED = re.compile(r"grpc connection to (\S+?):? ")
_ORDERER = (
    "no orderers could successfully process",
    "no orderer nodes available",
    "insufficient number of orderers",
    "no raft leader",
    "status=service_unavailable",
)
# A gateway that could not be dialled at all answers nothing of its own.
_UNREACHABLE = ("failed to connect to all addresses", "connection refused", "connect failed")


def part_down(
    code: str | None,
    message: str,
    details: Iterable[Said] = (),
    *,
    chaincode: str | None = None,
) -> PartDown | None:
    """The part a failed gateway call shows to be down, or None if its words name none.

    `code` is the gRPC status code's name; `chaincode` the chaincode the call was
    for (the gateway's words name only its package id).
    """
    said = tuple(details)
    text = " ".join((message, *(d.message for d in said)))
    lowered = text.lower()
    launch = _LAUNCH.search(text)
    if launch is not None:
        name = chaincode or launch.group(1)
        dialed = _DIALED.search(text)
        at = f" at {dialed.group(1)}" if dialed else ""
        return PartDown(
            Part.CHAINCODE, f"chaincode {name} is not running: the peer could not connect to it{at}"
        )
    if "timeout expired while executing transaction" in lowered:
        name = f"chaincode {chaincode}" if chaincode else "the chaincode"
        return PartDown(
            Part.CHAINCODE,
            f"{name} did not answer the peer in time: not connected (a chaincode server "
            "started with another CHAINCODE_ID than the installed package id) or overloaded",
        )
    if any(t in lowered for t in _ORDERER):
        return PartDown(Part.ORDERER, "the ordering service cannot take transactions now")
    if "failed to collect enough transaction endorsements" in lowered:
        named = ", ".join(f"{d.msp_id} at {d.address}" for d in said if d.msp_id or d.address)
        return PartDown(
            Part.ENDORSING_PEER,
            "the endorsement policy needs another organisation's peer, which did not endorse"
            + (f" ({named})" if named else ""),
        )
    if "no combination of peers can be derived" in lowered:
        return PartDown(
            Part.ENDORSING_PEER,
            "the endorsement policy needs another organisation's peer, and the gateway knows "
            "of none that is up",
        )
    if (
        not said
        and (code or "").upper() == "UNAVAILABLE"
        and any(t in lowered for t in _UNREACHABLE)
    ):
        return PartDown(Part.GATEWAY_PEER, "the gateway peer does not answer")
    return None
