"""asyncio Gateway client (grpc.aio): one process waits on thousands of commits.

A CommitStatus call is an open HTTP/2 stream, not a thread, so waiting costs
a coroutine, not a worker. A Fabric peer admits only so many concurrent
gateway requests (``peer.limits.concurrency.gatewayService``, 500 by default)
and refuses the rest, so the client keeps at most ``max_in_flight`` calls on
the wire and queues the other waits locally, inside their deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from saga.adapters.fabric import messages
from saga.adapters.fabric.connection import GatewayEndpoint
from saga.adapters.fabric.errors import CommitStatusError, EvaluateError, GatewayError, SubmitError
from saga.adapters.fabric.gateway import Deadlines
from saga.adapters.fabric.identity import SigningIdentity
from saga.adapters.fabric.peers import NEXT_PEER_CONNECT_WAIT, PeerSet, unreachable
from saga.adapters.fabric.proposal import Arg, build_proposal
from saga.adapters.fabric.protos import gateway_pb2_grpc
from saga.adapters.fabric.transaction import as_prepared
from saga.ports.ledger import CommitResult, PreparedTx, Submitted

T = TypeVar("T")

# Below Fabric's default gatewayService limit of 500, leaving room for the
# peer's other clients.
DEFAULT_MAX_IN_FLIGHT = 400


class AsyncGatewayClient:
    """Async commit status, submit and evaluate over one grpc.aio channel.

    Create it inside the event loop that uses it: grpc.aio channels are bound
    to the loop they were opened in.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel | Sequence[grpc.aio.Channel],
        identity: SigningIdentity,
        *,
        deadlines: Deadlines | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        owns_channel: bool = False,
        peers: PeerSet | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._channels = [channel] if isinstance(channel, grpc.aio.Channel) else list(channel)
        if peers is not None and len(peers) != len(self._channels):
            raise ValueError("one channel per peer endpoint")
        self._stubs = [gateway_pb2_grpc.GatewayStub(c) for c in self._channels]
        self._peers = peers
        self.identity = identity
        self.deadlines = deadlines or Deadlines()
        self.max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight = 0
        self._owns_channel = owns_channel

    @classmethod
    def connect(
        cls,
        endpoint: GatewayEndpoint | Sequence[GatewayEndpoint] | PeerSet,
        identity: SigningIdentity,
        *,
        deadlines: Deadlines | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> AsyncGatewayClient:
        """Channels to one peer or several of the client's org; pass the same PeerSet
        to a client opened again to start on the peer last found alive."""
        peers = PeerSet.of(endpoint)
        return cls(
            [e.open_aio_channel() for e in peers.endpoints],
            identity,
            deadlines=deadlines,
            max_in_flight=max_in_flight,
            owns_channel=True,
            peers=peers,
        )

    @property
    def in_flight(self) -> int:
        """Calls currently on the wire."""
        return self._in_flight

    async def _limited(
        self,
        call: Callable[[float], Awaitable[T]],
        timeout: float,
        error: type[GatewayError],
        txid: str,
    ) -> T:
        """Run ``call(remaining_seconds)`` once a slot is free; the deadline covers the wait."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise error(
                txid=txid,
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
                status_message=f"no free call slot (max_in_flight={self.max_in_flight}) "
                f"within {timeout:g}s",
            ) from None
        self._in_flight += 1
        try:
            return await call(max(0.0, timeout - (loop.time() - started)))
        finally:
            self._in_flight -= 1
            self._slots.release()

    async def close(self) -> None:
        if self._owns_channel:
            for channel in self._channels:
                await channel.close()

    async def _ask(
        self,
        rpc: Callable[[gateway_pb2_grpc.GatewayStub], Callable[..., Awaitable[T]]],
        request: Message,
        remaining: float,
        error: type[GatewayError],
        txid: str,
        *,
        ask_next_peer: bool = True,
    ) -> T:
        """The call on the peer in use, then (if it cannot be reached and
        `ask_next_peer`) on the others within the same deadline; one error, the last."""
        if self._peers is None:
            try:
                return await rpc(self._stubs[0])(request, timeout=remaining)
            except grpc.RpcError as exc:
                raise error.from_rpc_error(exc, txid) from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + remaining
        failure: GatewayError | None = None
        for index in self._peers.order():
            left = deadline - loop.time()
            if failure is not None:
                if left <= 0:
                    break
                # A channel that failed before fails every call until it redialled.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._channels[index].channel_ready(),
                        min(left, NEXT_PEER_CONNECT_WAIT),
                    )
                left = deadline - loop.time()
            try:
                return await rpc(self._stubs[index])(request, timeout=max(left, 0.0))
            except grpc.RpcError as exc:
                failure = error.from_rpc_error(exc, txid)
                if not unreachable(failure):
                    raise failure from exc
                self._peers.moved_from(index, failure)
                if not ask_next_peer:
                    raise failure from exc
        assert failure is not None
        raise failure

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

        async def call(remaining: float) -> CommitResult:
            response = await self._ask(
                lambda stub: stub.CommitStatus, request, remaining, CommitStatusError, txid
            )
            return messages.commit_result(txid, response)

        limit = self.deadlines.commit_status if timeout is None else timeout
        return await self._limited(call, limit, CommitStatusError, txid)

    async def submit(
        self, prepared: PreparedTx | bytes, *, timeout: float | None = None
    ) -> Submitted:
        tx = as_prepared(prepared)
        request = messages.submit_request(tx.txid, tx.channel, tx.envelope)

        async def call(remaining: float) -> Submitted:
            # Never sent again here: the envelope may have reached the orderer.
            await self._ask(
                lambda stub: stub.Submit,
                request,
                remaining,
                SubmitError,
                tx.txid,
                ask_next_peer=False,
            )
            return Submitted(txid=tx.txid, channel=tx.channel)

        limit = self.deadlines.submit if timeout is None else timeout
        return await self._limited(call, limit, SubmitError, tx.txid)

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
        request = messages.evaluate_request(proposal)

        async def call(remaining: float) -> bytes:
            response = await self._ask(
                lambda stub: stub.Evaluate, request, remaining, EvaluateError, proposal.txid
            )
            return messages.evaluate_payload(proposal, response)

        limit = self.deadlines.evaluate if timeout is None else timeout
        return await self._limited(call, limit, EvaluateError, proposal.txid)
