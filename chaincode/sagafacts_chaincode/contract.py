"""The chaincode as fabric-chaincode-python runs it; Invoke dispatches to .facts."""

from __future__ import annotations

import logging
from typing import Any

from fabric_chaincode_python.fabric_shim.interfaces import Chaincode
from fabric_protos.peer import chaincode_shim_pb2, proposal_response_pb2

from sagafacts_chaincode import facts

log = logging.getLogger(__name__)

_ERROR = chaincode_shim_pb2.ChaincodeMessage.ERROR


class PeerRefused(Exception):
    """The peer answered a state request with ERROR."""


class ShimState:
    """:class:`facts.State` over the shim stub of one transaction.

    The library's ``stub.get_state`` returns only the reply's payload, so an
    ERROR from the peer reads as a value holding the error text; records are
    JSON objects, and :func:`facts.load` refuses anything else, so such a reply
    ends the transaction with INTERNAL instead of being taken for a record.
    """

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    async def get(self, key: str) -> bytes | None:
        return bytes(await self._stub.get_state(key)) or None

    async def put(self, key: str, value: bytes) -> None:
        reply = await self._stub.put_state(key, value)
        if reply.type == _ERROR:
            raise PeerRefused(bytes(reply.payload).decode("utf-8", "replace"))


def tx_info(stub: Any) -> facts.TxInfo:
    ts = stub.get_tx_timestamp()
    creator = stub.get_creator() or {}
    return facts.TxInfo(
        txid=str(stub.get_txid()),
        timestamp=ts.ToJsonString() if ts is not None else "",
        creator_msp=str(creator.get("mspid", "")),
    )


def error(status: int, message: str) -> Any:
    return proposal_response_pb2.Response(status=status, message=message)


class SagaFactsChaincode(Chaincode):
    """Functions: RecordPayment, ReversePayment, RecordFact, ReverseFact, GetRecord."""

    async def init(self, stub: Any) -> Any:
        # Fabric 2.x lifecycle needs no Init; answer success for --init-required deployments.
        return proposal_response_pb2.Response(status=facts.OK)

    async def invoke(self, stub: Any) -> Any:
        # The library sends no COMPLETED if invoke raises, leaving the peer to time
        # out, so every failure must become an error Response here.
        try:
            args = [bytes(a).decode("utf-8") for a in stub.cc_input.args]
        except UnicodeDecodeError:
            return error(facts.BAD_REQUEST, "INVALID_ARGUMENT:arguments must be UTF-8 text")
        if not args:
            return error(facts.BAD_REQUEST, "INVALID_ARGUMENT:no function name given")
        name, params = args[0], args[1:]
        function = facts.FUNCTIONS.get(name)
        if function is None:
            known = ", ".join(sorted(facts.FUNCTIONS))
            return error(
                facts.BAD_REQUEST, f"UNKNOWN_FUNCTION:{name!r} is not a function; try {known}"
            )
        try:
            payload = await function(ShimState(stub), tx_info(stub), params)
        except facts.Refusal as refusal:
            return error(refusal.status, refusal.message)
        except PeerRefused as exc:
            return error(facts.INTERNAL, f"INTERNAL:peer refused a state request: {exc}")
        except Exception as exc:
            log.exception("%s failed in transaction %s", name, stub.get_txid())
            return error(facts.INTERNAL, f"INTERNAL:{type(exc).__name__}: {exc}")
        return proposal_response_pb2.Response(status=facts.OK, payload=payload)
