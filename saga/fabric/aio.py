"""asyncio Gateway client (grpc.aio): one process waits on thousands of commits.

A CommitStatus call is an open HTTP/2 stream, not a thread, so a commit watcher
can keep one call per in-flight transaction on a single channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType

import grpc
import grpc.aio

from saga.fabric import messages
from saga.fabric.connection import GatewayEndpoint
from saga.fabric.errors import CommitStatusError, EvaluateError, SubmitError
from saga.fabric.gateway import Deadlines
from saga.fabric.identity import SigningIdentity
from saga.fabric.proposal import Arg, build_proposal
from saga.fabric.protos import gateway_pb2_grpc
from saga.fabric.transaction import as_prepared
from saga.ledger_port import CommitResult, PreparedTx, Submitted


class AsyncGatewayClient:
    """Async commit status, submit and evaluate over one grpc.aio channel.

    Create it inside the event loop that uses it: grpc.aio channels are bound
    to the loop they were opened in.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        identity: SigningIdentity,
        *,
        deadlines: Deadlines | None = None,
        owns_channel: bool = False,
    ) -> None:
        self._channel = channel
        self._stub = gateway_pb2_grpc.GatewayStub(channel)
        self.identity = identity
        self.deadlines = deadlines or Deadlines()
        self._owns_channel = owns_channel

    @classmethod
    def connect(
        cls,
        endpoint: GatewayEndpoint,
        identity: SigningIdentity,
        *,
        deadlines: Deadlines | None = None,
    ) -> AsyncGatewayClient:
        return cls(endpoint.open_aio_channel(), identity, deadlines=deadlines, owns_channel=True)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def commit_status(
        self, channel: str, txid: str, *, timeout: float | None = None
    ) -> CommitResult:
        """Wait for the txid's commit. Raises CommitStatusError (a StatusUnknown)."""
        request = messages.signed_commit_status_request(self.identity, channel, txid)
        try:
            response = await self._stub.CommitStatus(
                request, timeout=self.deadlines.commit_status if timeout is None else timeout
            )
        except grpc.RpcError as exc:
            raise CommitStatusError.from_rpc_error(exc, txid) from exc
        return messages.commit_result(txid, response)

    async def submit(
        self, prepared: PreparedTx | bytes, *, timeout: float | None = None
    ) -> Submitted:
        tx = as_prepared(prepared)
        try:
            await self._stub.Submit(
                messages.submit_request(tx.txid, tx.channel, tx.envelope),
                timeout=self.deadlines.submit if timeout is None else timeout,
            )
        except grpc.RpcError as exc:
            raise SubmitError.from_rpc_error(exc, tx.txid) from exc
        return Submitted(txid=tx.txid, channel=tx.channel)

    async def evaluate(
        self,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[Arg] = (),
        *,
        target_orgs: Sequence[str] | None = None,
        transient: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        proposal = build_proposal(
            self.identity,
            channel,
            chaincode,
            function,
            args,
            transient=transient,
            endorsing_orgs=target_orgs,
        )
        try:
            response = await self._stub.Evaluate(
                messages.evaluate_request(proposal),
                timeout=self.deadlines.evaluate if timeout is None else timeout,
            )
        except grpc.RpcError as exc:
            raise EvaluateError.from_rpc_error(exc, proposal.txid) from exc
        return messages.evaluate_payload(proposal, response)
