"""Blocking Fabric Gateway client; implements the ledger port.

Lifecycle, each object carrying the txid:
``new_proposal`` -> Proposal -> ``endorse`` -> PreparedTransaction (store its
bytes) -> ``submit`` -> Submitted -> ``commit_status`` -> CommitResult.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from saga.adapters.fabric import messages
from saga.adapters.fabric.connection import GatewayEndpoint
from saga.adapters.fabric.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    EvaluateError,
    GatewayError,
    SubmitError,
)
from saga.adapters.fabric.identity import SigningIdentity
from saga.adapters.fabric.peers import NEXT_PEER_CONNECT_WAIT, PeerSet, unreachable
from saga.adapters.fabric.proposal import Arg, Proposal, build_proposal
from saga.adapters.fabric.protos import gateway_pb2_grpc
from saga.adapters.fabric.transaction import PreparedTransaction, as_prepared
from saga.ports.ledger import CommitResult, PreparedTx, Submitted

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Per-call deadlines in seconds.

    Fabric's CommitStatus has no server-side timeout: it waits until the
    transaction commits, for ever if it never will, so the client always bounds it.
    """

    endorse: float = 30.0
    submit: float = 30.0
    commit_status: float = 60.0
    evaluate: float = 30.0


class GatewayClient:
    """gRPC channels to the Gateway peers of one org, reused for every call; thread-safe.

    Calls go to one peer; when it cannot be reached the client moves to the next
    (saga.adapters.fabric.peers says which calls are asked again and which not).
    """

    def __init__(
        self,
        channel: grpc.Channel | Sequence[grpc.Channel],
        identity: SigningIdentity,
        *,
        deadlines: Deadlines | None = None,
        owns_channel: bool = False,
        peers: PeerSet | None = None,
    ) -> None:
        self._channels = [channel] if isinstance(channel, grpc.Channel) else list(channel)
        if peers is not None and len(peers) != len(self._channels):
            raise ValueError("one channel per peer endpoint")
        self._stubs = [gateway_pb2_grpc.GatewayStub(c) for c in self._channels]
        self._peers = peers
        self.identity = identity
        self.deadlines = deadlines or Deadlines()
        self._owns_channel = owns_channel

    @classmethod
    def connect(
        cls,
        endpoint: GatewayEndpoint | Sequence[GatewayEndpoint] | PeerSet,
        identity: SigningIdentity,
        *,
        deadlines: Deadlines | None = None,
    ) -> GatewayClient:
        """Channels to one peer or to several of the client's org (the first is used
        until it cannot be reached); nothing is dialled before the first call."""
        peers = PeerSet.of(endpoint)
        channels = [e.open_channel() for e in peers.endpoints]
        return cls(channels, identity, deadlines=deadlines, owns_channel=True, peers=peers)

    @property
    def peer_address(self) -> str | None:
        """The address calls go to now (None for a client built on a bare channel)."""
        return None if self._peers is None else self._peers.endpoints[self._peers.current].address

    def close(self) -> None:
        if self._owns_channel:
            for channel in self._channels:
                channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        rpc: Callable[[gateway_pb2_grpc.GatewayStub], Callable[..., T]],
        request: Message,
        timeout: float,
        error: type[GatewayError],
        txid: str,
        *,
        ask_next_peer: bool = True,
    ) -> T:
        """One unary Gateway call; a gRPC failure becomes `error`, naming the txid.

        An unreachable peer hands the call to the next one within the same deadline
        when `ask_next_peer` (never for Submit); the caller sees one error, the last.
        """
        if self._peers is None:
            try:
                return rpc(self._stubs[0])(request, timeout=timeout)
            except grpc.RpcError as exc:
                raise error.from_rpc_error(exc, txid) from exc
        deadline = time.monotonic() + timeout
        failure: GatewayError | None = None
        for index in self._peers.order():
            left = deadline - time.monotonic()
            if failure is not None:
                if left <= 0:
                    break
                self._await_connected(index, min(left, NEXT_PEER_CONNECT_WAIT))
                left = deadline - time.monotonic()
            try:
                return rpc(self._stubs[index])(request, timeout=max(left, 0.0))
            except grpc.RpcError as exc:
                failure = error.from_rpc_error(exc, txid)
                if not unreachable(failure):
                    raise failure from exc
                self._peers.moved_from(index, failure)
                if not ask_next_peer:
                    raise failure from exc
        assert failure is not None
        raise failure

    def _await_connected(self, index: int, seconds: float) -> None:
        """Let the channel to peer `index` (re)connect, for up to `seconds`; the call
        that follows reports a peer still unreachable."""
        ready = grpc.channel_ready_future(self._channels[index])
        try:
            ready.result(timeout=max(seconds, 0.0))
        except grpc.FutureTimeoutError:
            # Stops watching the channel's connectivity; the channel goes on redialling.
            ready.cancel()

    # -- lifecycle steps ---------------------------------------------------

    def new_proposal(
        self,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[Arg] = (),
        *,
        endorsing_orgs: Sequence[str] | None = None,
        transient: Mapping[str, bytes] | None = None,
    ) -> Proposal:
        return build_proposal(
            self.identity,
            channel,
            chaincode,
            function,
            args,
            transient=transient,
            endorsing_orgs=endorsing_orgs,
        )

    def endorse(self, proposal: Proposal, *, timeout: float | None = None) -> PreparedTransaction:
        response = self._call(
            lambda stub: stub.Endorse,
            messages.endorse_request(proposal),
            self.deadlines.endorse if timeout is None else timeout,
            EndorseError,
            proposal.txid,
        )
        try:
            prepared = PreparedTransaction.sign(response.prepared_transaction, self.identity)
        except ValueError as exc:
            # A broken or hostile gateway: an EndorseError (no transaction exists)
            # lets the chain step fail as an endorsement failure instead of
            # escaping as a bare ValueError that only a dead-letter queue catches.
            raise EndorseError(
                txid=proposal.txid,
                code=None,
                status_message=f"the gateway's prepared transaction is unusable: {exc}",
            ) from exc
        # Never sign, store or submit a transaction other than the one proposed:
        # its txid is what the saga recorded before endorsing.
        if (prepared.txid, prepared.channel) != (proposal.txid, proposal.channel):
            raise EndorseError(
                txid=proposal.txid,
                code=None,
                status_message=f"the gateway prepared transaction {prepared.txid} "
                f"on channel {prepared.channel!r} instead",
            )
        return prepared

    def submit(self, prepared: PreparedTx | bytes, *, timeout: float | None = None) -> Submitted:
        """Send the signed envelope to be ordered. Sending the same bytes again is safe:
        the ledger keeps only the first commit of a txid valid."""
        tx = as_prepared(prepared)
        self._call(
            lambda stub: stub.Submit,
            messages.submit_request(tx.txid, tx.channel, tx.envelope),
            self.deadlines.submit if timeout is None else timeout,
            SubmitError,
            tx.txid,
            # The envelope may have reached the orderer: the verify path decides.
            ask_next_peer=False,
        )
        return Submitted(txid=tx.txid, channel=tx.channel)

    def commit_status(
        self, channel: str, txid: str, *, timeout: float | None = None
    ) -> CommitResult:
        """Wait for the txid's commit. Raises CommitStatusError (a StatusUnknown)."""
        response = self._call(
            lambda stub: stub.CommitStatus,
            messages.signed_commit_status_request(self.identity, channel, txid),
            self.deadlines.commit_status if timeout is None else timeout,
            CommitStatusError,
            txid,
        )
        return messages.commit_result(txid, response)

    def evaluate_proposal(self, proposal: Proposal, *, timeout: float | None = None) -> bytes:
        response = self._call(
            lambda stub: stub.Evaluate,
            messages.evaluate_request(proposal),
            self.deadlines.evaluate if timeout is None else timeout,
            EvaluateError,
            proposal.txid,
        )
        return messages.evaluate_payload(proposal, response)

    # -- the ledger port ---------------------------------------------------

    def prepare(
        self,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[Arg] = (),
        *,
        endorsing_orgs: Sequence[str] | None = None,
        transient: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> PreparedTransaction:
        proposal = self.new_proposal(
            channel, chaincode, function, args, endorsing_orgs=endorsing_orgs, transient=transient
        )
        return self.endorse(proposal, timeout=timeout)

    def evaluate(
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
        proposal = self.new_proposal(
            channel, chaincode, function, args, endorsing_orgs=target_orgs, transient=transient
        )
        return self.evaluate_proposal(proposal, timeout=timeout)

    # -- convenience -------------------------------------------------------

    def submit_transaction(
        self,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[Arg] = (),
        *,
        endorsing_orgs: Sequence[str] | None = None,
        transient: Mapping[str, bytes] | None = None,
    ) -> bytes:
        """Endorse, submit, wait; the chaincode's result, or CommitError if not VALID.

        For tools and tests: a chain step must store the prepared bytes between
        ``prepare`` and ``submit`` instead.
        """
        prepared = self.prepare(
            channel, chaincode, function, args, endorsing_orgs=endorsing_orgs, transient=transient
        )
        self.submit(prepared)
        result = self.commit_status(channel, prepared.txid)
        if not result.valid:
            raise CommitError(result)
        return prepared.result()
