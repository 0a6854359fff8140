"""Peer side of the chaincode shim protocol (``protos.Chaincode/Connect``).

A Fabric peer talks to chaincode-as-a-service by dialling the chaincode's gRPC
server and holding one bidirectional stream open per chaincode. This module is
that peer side, for the devnet: it registers the chaincode, sends TRANSACTION
messages, answers the chaincode's state requests from a :class:`StateReader`,
and turns the chaincode's COMPLETED / ERROR into a :class:`Simulation` (the
response plus the read/write set the endorser signs).

Semantics follow ``core/chaincode/handler.go`` and the ledger's transaction
simulator in Fabric 2.5:

* GET_STATE always reads committed state, never the transaction's own pending
  writes, and records the version it saw (``None`` for an absent key). Fabric's
  shim documents this ("GetState doesn't read data from the writeset"), and a
  chaincode that relied on read-your-writes would pass here and fail on a peer.
* PUT_STATE with an empty value is a delete, as Fabric's rwset builder does.
* Reads and writes are one entry per key, sorted by key, as in a Fabric rwset.
  A key read twice keeps the first version seen, so a commit that slips in
  between the two reads still fails MVCC validation.
* Range reads are not added to ``reads``; they are reported in
  ``range_queries`` (Fabric's RangeQueryInfo), which phantom-read validation
  uses. Results are streamed 100 per QueryResponse, like Fabric's
  ``maxResultLimit``.
* Errors the peer returns to the chaincode are ERROR messages whose payload is
  ``"<TYPE> failed: transaction ID: <txid>: <reason>"``, as Fabric formats them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from fabric_protos.ledger.queryresult import kv_query_result_pb2
from fabric_protos.peer import (
    chaincode_event_pb2,
    chaincode_pb2,
    chaincode_shim_pb2,
    chaincode_shim_pb2_grpc,
    proposal_pb2,
    proposal_response_pb2,
)

__all__ = [
    "ChaincodeClient",
    "ChaincodeStreamTerminated",
    "ChaincodeTimeout",
    "ChaincodeUnavailable",
    "KVRead",
    "KVWrite",
    "RangeQuery",
    "ShimError",
    "Simulation",
    "StateReader",
]

log = logging.getLogger(__name__)

Msg = chaincode_shim_pb2.ChaincodeMessage
SignedProposal = proposal_pb2.SignedProposal
ChaincodeInput = chaincode_pb2.ChaincodeInput

# Fabric's QueryResponseBuilder sends at most this many results per response.
QUERY_BATCH_SIZE = 100
# Fabric's default chaincode.totalQueryLimit.
TOTAL_QUERY_LIMIT = 100_000

Version = tuple[int, int]


@dataclass(frozen=True)
class KVRead:
    key: str
    version: tuple[int, int] | None  # (block_num, tx_num), None if the key was absent


@dataclass(frozen=True)
class KVWrite:
    key: str
    value: bytes
    is_delete: bool = False


@dataclass(frozen=True)
class RangeQuery:
    """One range read, as Fabric's ``kvrwset.RangeQueryInfo`` (raw reads form).

    When ``itr_exhausted`` is False the chaincode stopped early and the range
    that was really observed is ``[start_key, end_key]`` inclusive of
    ``end_key`` (the last key delivered); otherwise ``[start_key, end_key)``
    with an empty ``end_key`` meaning "to the end of the namespace".
    """

    start_key: str
    end_key: str
    itr_exhausted: bool
    reads: tuple[KVRead, ...]


@dataclass(frozen=True)
class Simulation:
    status: int
    message: str
    payload: bytes
    reads: tuple[KVRead, ...]
    writes: tuple[KVWrite, ...]
    event: bytes | None  # serialized peer.ChaincodeEvent, or None
    range_queries: tuple[RangeQuery, ...] = ()


class StateReader(Protocol):
    """Committed world state, as the endorser's transaction simulator sees it."""

    def get_state(self, namespace: str, key: str) -> tuple[bytes, tuple[int, int]] | None:
        """Value and (block_num, tx_num) version of ``key``, or None if absent."""
        ...

    def get_state_by_range(
        self, namespace: str, start: str, end: str
    ) -> list[tuple[str, bytes, tuple[int, int]]]:
        """Keys in ``[start, end)`` sorted ascending; an empty ``end`` means no upper bound."""
        ...


class ShimError(Exception):
    """The chaincode could not be run (as opposed to the chaincode refusing)."""


class ChaincodeUnavailable(ShimError):
    """The chaincode server cannot be reached or did not register."""


class ChaincodeStreamTerminated(ShimError):
    """The chaincode stream ended while a transaction was executing."""


class ChaincodeTimeout(ShimError):
    """The chaincode did not complete the transaction in time."""


class _ShimRequestError(Exception):
    """A chaincode request the peer refuses; sent back to the chaincode as ERROR."""


@dataclass
class _RangeIterator:
    start_key: str
    end_key: str
    results: list[tuple[str, bytes, Version]]
    paginated: bool
    bookmark: str = ""
    position: int = 0
    delivered: list[KVRead] = field(default_factory=list)


@dataclass
class _TxContext:
    channel_id: str
    txid: str
    state: StateReader
    namespace: str
    done: asyncio.Future[chaincode_shim_pb2.ChaincodeMessage]
    reads: dict[str, KVRead] = field(default_factory=dict)
    writes: dict[str, KVWrite] = field(default_factory=dict)
    iterators: dict[str, _RangeIterator] = field(default_factory=dict)
    range_queries: list[RangeQuery] = field(default_factory=list)
    paginated_query_done: bool = False
    next_iterator_id: int = 0

    def close_iterators(self) -> None:
        for iter_id in list(self.iterators):
            self._record_range(iter_id)

    def _record_range(self, iter_id: str) -> None:
        it = self.iterators.pop(iter_id)
        if it.paginated:
            # Fabric does not validate paginated queries: such a transaction may not write.
            return
        exhausted = it.position >= len(it.results)
        end_key = it.end_key if exhausted else (it.delivered[-1].key if it.delivered else "")
        if not exhausted and not it.delivered:
            return
        self.range_queries.append(RangeQuery(it.start_key, end_key, exhausted, tuple(it.delivered)))


_Handler = Callable[[_TxContext, "chaincode_shim_pb2.ChaincodeMessage"], bytes]


class ChaincodeClient:
    """The peer's connection to one chaincode-as-a-service server.

    ``name`` is the chaincode name, which is also the world-state namespace
    that its reads and writes go to. ``package_id``, when given, must match
    the id the chaincode registers with (a real peer launches a chaincode by
    package id and waits for that id to register); otherwise any non-empty id
    is accepted and kept in :attr:`registered_id`.

    One stream carries any number of concurrent transactions, keyed by
    (channel_id, txid). If the stream breaks, in-flight transactions fail with
    :class:`ChaincodeStreamTerminated` and the next :meth:`execute` dials again.
    """

    def __init__(
        self,
        name: str,
        address: str,
        *,
        tls_root_cert: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        package_id: str | None = None,
        server_name_override: str | None = None,
        keepalive: float | None = None,
        dial_timeout: float = 10.0,
    ) -> None:
        if not name:
            raise ValueError("chaincode name must not be empty")
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key must be given together")
        if client_cert is not None and tls_root_cert is None:
            raise ValueError("mutual TLS needs tls_root_cert as well")
        self.name = name
        self.address = address
        self.package_id = package_id
        self.registered_id: str | None = None
        self._tls_root_cert = tls_root_cert
        self._client_cert = client_cert
        self._client_key = client_key
        self._server_name_override = server_name_override
        self._keepalive = keepalive
        self._dial_timeout = dial_timeout
        self._channel: grpc.aio.Channel | None = None
        self._call: (
            grpc.aio.StreamStreamCall[
                chaincode_shim_pb2.ChaincodeMessage, chaincode_shim_pb2.ChaincodeMessage
            ]
            | None
        ) = None
        self._reader: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._ready = False
        self._txs: dict[tuple[str, str], _TxContext] = {}

    @property
    def launch_id(self) -> str:
        """The id a peer launches the chaincode by (its package id), for error messages."""
        return self.package_id or self.registered_id or self.name

    @property
    def connected(self) -> bool:
        return self._ready and self._reader is not None and not self._reader.done()

    async def connect(self) -> None:
        """Dial the chaincode, wait for REGISTER, answer REGISTERED and READY."""
        async with self._connect_lock:
            if self.connected:
                return
            await self._teardown()
            try:
                await asyncio.wait_for(self._open(), self._dial_timeout)
            except (TimeoutError, grpc.aio.AioRpcError) as exc:
                await self._teardown()
                ccid = self.launch_id
                raise ChaincodeUnavailable(
                    f"connection to {ccid} failed: error cannot create connection for {ccid}: "
                    f"error creating grpc connection to {self.address}: failed to create new "
                    f"connection: {_dial_error(exc, self.address)}"
                ) from exc
            except BaseException:
                await self._teardown()
                raise

    async def _open(self) -> None:
        # A private subchannel pool: grpc otherwise shares connection backoff across
        # channels, and a redial right after the chaincode restarted would fail fast.
        options: list[tuple[str, str | int]] = [("grpc.use_local_subchannel_pool", 1)]
        if self._server_name_override:
            options.append(("grpc.ssl_target_name_override", self._server_name_override))
        if self._tls_root_cert is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self._tls_root_cert,
                private_key=self._client_key,
                certificate_chain=self._client_cert,
            )
            self._channel = grpc.aio.secure_channel(self.address, creds, options=options)
        stub = chaincode_shim_pb2_grpc.ChaincodeStub(self._channel)
        # Not wait_for_ready: a peer dials chaincode-as-a-service with grpc.WithBlock and
        # FailOnNonTempDialError (internal/pkg/comm/config.go), so a refused connection fails
        # the launch at once instead of waiting out the dial timeout.
        self._call = stub.Connect(wait_for_ready=False)
        first = await self._call.read()
        if first is grpc.aio.EOF or first is None:
            raise ChaincodeUnavailable(f"chaincode {self.name} closed the stream before REGISTER")
        if first.type != Msg.REGISTER:
            raise ChaincodeUnavailable(
                f"chaincode {self.name} sent {Msg.Type.Name(first.type)} instead of REGISTER"
            )
        cc_id = chaincode_pb2.ChaincodeID.FromString(first.payload)
        if not cc_id.name:
            raise ChaincodeUnavailable(
                "error in handling register chaincode, chaincodeID name is empty"
            )
        if self.package_id is not None and cc_id.name != self.package_id:
            raise ChaincodeUnavailable(
                f"chaincode registered as {cc_id.name!r}, expected package id {self.package_id!r}"
            )
        self.registered_id = cc_id.name
        await self._send(Msg(type=Msg.REGISTERED))
        await self._send(Msg(type=Msg.READY))
        self._ready = True
        self._reader = asyncio.create_task(self._read_loop(), name=f"shim-reader-{self.name}")
        if self._keepalive:
            self._keepalive_task = asyncio.create_task(self._keepalive_loop(self._keepalive))

    async def close(self) -> None:
        async with self._connect_lock:
            await self._teardown()

    async def _teardown(self) -> None:
        self._ready = False
        tasks = [t for t in (self._reader, self._keepalive_task) if t is not None]
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for task in tasks:
            if task is not asyncio.current_task():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._reader = None
        self._keepalive_task = None
        self._fail_all(ChaincodeStreamTerminated("chaincode stream terminated"))
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _fail_all(self, exc: ShimError) -> None:
        for ctx in self._txs.values():
            if not ctx.done.done():
                ctx.done.set_exception(exc)
        self._txs.clear()

    async def _send(self, msg: chaincode_shim_pb2.ChaincodeMessage) -> None:
        # grpc.aio allows one outstanding write per stream; Fabric serialises sends the same way.
        call = self._call
        if call is None:
            raise ChaincodeStreamTerminated("chaincode stream is not open")
        async with self._send_lock:
            await call.write(msg)

    async def _keepalive_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await self._send(Msg(type=Msg.KEEPALIVE))

    async def _read_loop(self) -> None:
        call = self._call
        assert call is not None
        reason = "chaincode stream terminated"
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF or msg is None:
                    break
                await self._dispatch(msg)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            reason = f"chaincode stream terminated: {exc.code().name} {exc.details()}"
        except Exception as exc:
            log.exception("chaincode %s: error handling a shim message", self.name)
            reason = f"chaincode stream terminated: {exc}"
        self._ready = False
        log.warning("chaincode %s: %s", self.name, reason)
        # The cause goes to the log only: Fabric's message is exactly ErrorStreamTerminated.
        self._fail_all(ChaincodeStreamTerminated("chaincode stream terminated"))

    async def _dispatch(self, msg: chaincode_shim_pb2.ChaincodeMessage) -> None:
        if msg.type == Msg.KEEPALIVE:
            return
        ctx = self._txs.get((msg.channel_id, msg.txid))
        if msg.type in (Msg.COMPLETED, Msg.ERROR):
            if ctx is None:
                log.debug("chaincode %s: %s for unknown tx %s", self.name, msg.type, msg.txid)
            elif not ctx.done.done():
                ctx.done.set_result(msg)
            return
        handler = _HANDLERS.get(msg.type)
        if handler is None:
            # Fabric ends the stream on a message type it cannot handle in the ready state.
            raise ShimError(f"[{msg.txid}] peer cannot handle message ({Msg.Type.Name(msg.type)})")
        if ctx is None:
            reply = _error_reply(msg, "no ledger context")
        else:
            try:
                payload = handler(ctx, msg)
                reply = Msg(
                    type=Msg.RESPONSE, payload=payload, txid=msg.txid, channel_id=msg.channel_id
                )
            except _ShimRequestError as exc:
                reply = _error_reply(msg, str(exc))
        await self._send(reply)

    async def execute(
        self,
        *,
        channel_id: str,
        txid: str,
        signed_proposal: proposal_pb2.SignedProposal,
        input: chaincode_pb2.ChaincodeInput,
        state: StateReader,
        timeout: float = 30.0,
    ) -> Simulation:
        """Simulate one transaction. Chaincode refusals come back as a Simulation
        with status >= 400; a chaincode that cannot be run raises :class:`ShimError`."""
        if not self.connected:
            try:
                await self.connect()
            except ChaincodeUnavailable as exc:
                # The chain of wrappings a 2.5 peer puts around a failed launch
                # (chaincode_support.go Launch / processChaincodeExecutionResult).
                raise ChaincodeUnavailable(
                    f"failed to execute transaction {txid}: could not launch chaincode "
                    f"{self.launch_id}: {exc}"
                ) from exc
        key = (channel_id, txid)
        if key in self._txs:
            raise ShimError(f"txid: {txid}({channel_id}) exists")
        loop = asyncio.get_running_loop()
        ctx = _TxContext(channel_id, txid, state, self.name, loop.create_future())
        self._txs[key] = ctx
        try:
            await self._send(
                Msg(
                    type=Msg.TRANSACTION,
                    payload=input.SerializeToString(),
                    txid=txid,
                    channel_id=channel_id,
                    proposal=signed_proposal,
                )
            )
            try:
                reply = await asyncio.wait_for(asyncio.shield(ctx.done), timeout)
            except TimeoutError:
                raise ChaincodeTimeout(
                    f"failed to execute transaction {txid}: "
                    "timeout expired while executing transaction"
                ) from None
        except (grpc.aio.AioRpcError, ChaincodeStreamTerminated) as exc:
            # Fabric's message ends with "chaincode stream terminated"; the gateway keys on
            # that suffix (apiutils.go responseStatus).
            log.info("chaincode %s: transaction %s lost with the stream: %s", self.name, txid, exc)
            raise ChaincodeStreamTerminated(
                f"failed to execute transaction {txid}: chaincode stream terminated"
            ) from exc
        finally:
            if self._txs.get(key) is ctx:
                del self._txs[key]
            ctx.close_iterators()
        return self._simulation(ctx, reply)

    def _simulation(
        self, ctx: _TxContext, reply: chaincode_shim_pb2.ChaincodeMessage
    ) -> Simulation:
        event: bytes | None = None
        if reply.HasField("chaincode_event"):
            ev = chaincode_event_pb2.ChaincodeEvent()
            ev.CopyFrom(reply.chaincode_event)
            ev.chaincode_id = self.name
            ev.tx_id = ctx.txid
            event = ev.SerializeToString()
        reads = tuple(ctx.reads[k] for k in sorted(ctx.reads))
        writes = tuple(ctx.writes[k] for k in sorted(ctx.writes))
        ranges = tuple(ctx.range_queries)
        if reply.type == Msg.ERROR:
            message = "transaction returned with failure: " + reply.payload.decode(
                "utf-8", "replace"
            )
            return Simulation(500, message, b"", reads, writes, event, ranges)
        resp = proposal_response_pb2.Response()
        try:
            resp.ParseFromString(reply.payload)
        except Exception as exc:
            raise ShimError(f"failed to unmarshal response for transaction {ctx.txid}") from exc
        return Simulation(resp.status, resp.message, resp.payload, reads, writes, event, ranges)


def _dial_error(exc: BaseException, address: str) -> str:
    """A failed dial in the words of Go's grpc, which is what a real peer's message carries."""
    if isinstance(exc, TimeoutError):
        return "context deadline exceeded"
    details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    if "Connection refused" in (details or ""):
        return (
            'connection error: desc = "transport: error while dialing: dial tcp '
            f'{address}: connect: connection refused"'
        )
    return f'connection error: desc = "transport: {details}"'


# Shim requests from the chaincode: each returns the RESPONSE payload or raises
# _ShimRequestError, which becomes an ERROR message.


def _get_state(ctx: _TxContext, msg: chaincode_shim_pb2.ChaincodeMessage) -> bytes:
    req = chaincode_shim_pb2.GetState.FromString(msg.payload)
    _refuse_private(req.collection)
    found = ctx.state.get_state(ctx.namespace, req.key)
    if req.key not in ctx.reads:
        ctx.reads[req.key] = KVRead(req.key, None if found is None else found[1])
    return b"" if found is None else found[0]


def _put_state(ctx: _TxContext, msg: chaincode_shim_pb2.ChaincodeMessage) -> bytes:
    req = chaincode_shim_pb2.PutState.FromString(msg.payload)
    _refuse_private(req.collection)
    _check_write_allowed(ctx)
    ctx.writes[req.key] = KVWrite(req.key, req.value, is_delete=len(req.value) == 0)
    return b""


def _del_state(ctx: _TxContext, msg: chaincode_shim_pb2.ChaincodeMessage) -> bytes:
    req = chaincode_shim_pb2.DelState.FromString(msg.payload)
    _refuse_private(req.collection)
    _check_write_allowed(ctx)
    ctx.writes[req.key] = KVWrite(req.key, b"", is_delete=True)
    return b""


def _get_state_by_range(ctx: _TxContext, msg: chaincode_shim_pb2.ChaincodeMessage) -> bytes:
    req = chaincode_shim_pb2.GetStateByRange.FromString(msg.payload)
    _refuse_private(req.collection)
    meta = chaincode_shim_pb2.QueryMetadata()
    if req.metadata:
        meta.ParseFromString(req.metadata)
    paginated = meta.pageSize != 0 or meta.bookmark != ""
    start = req.startKey
    if paginated:
        if ctx.writes:
            raise _ShimRequestError(
                "txn-simulator: paginated queries are supported only in a read-only transaction"
            )
        ctx.paginated_query_done = True
        if meta.bookmark:
            start = meta.bookmark
    limit = TOTAL_QUERY_LIMIT
    if 0 < meta.pageSize < limit:
        limit = meta.pageSize
    results = ctx.state.get_state_by_range(ctx.namespace, start, req.endKey)
    bookmark = ""
    if paginated:
        if len(results) > limit:
            bookmark = results[limit][0]
        results = results[:limit]
    ctx.next_iterator_id += 1
    iter_id = f"{ctx.txid}-{ctx.next_iterator_id}"
    ctx.iterators[iter_id] = _RangeIterator(start, req.endKey, results, paginated, bookmark)
    return _next_batch(ctx, iter_id)


def _query_state_next(ctx: _TxContext, msg: chaincode_shim_pb2.ChaincodeMessage) -> bytes:
    req = chaincode_shim_pb2.QueryStateNext.FromString(msg.payload)
    if req.id not in ctx.iterators:
        raise _ShimRequestError("query iterator not found")
    return _next_batch(ctx, req.id)


def _query_state_close(ctx: _TxContext, msg: chaincode_shim_pb2.ChaincodeMessage) -> bytes:
    req = chaincode_shim_pb2.QueryStateClose.FromString(msg.payload)
    if req.id in ctx.iterators:
        ctx._record_range(req.id)
    return chaincode_shim_pb2.QueryResponse(has_more=False, id=req.id).SerializeToString()


def _unsupported(name: str) -> _Handler:
    def handler(ctx: _TxContext, msg: chaincode_shim_pb2.ChaincodeMessage) -> bytes:
        raise _ShimRequestError(f"{name} is not supported by the devnet peer")

    return handler


_HANDLERS: dict[int, _Handler] = {
    Msg.GET_STATE: _get_state,
    Msg.PUT_STATE: _put_state,
    Msg.DEL_STATE: _del_state,
    Msg.GET_STATE_BY_RANGE: _get_state_by_range,
    Msg.QUERY_STATE_NEXT: _query_state_next,
    Msg.QUERY_STATE_CLOSE: _query_state_close,
}
for _type, _name in (
    (Msg.GET_QUERY_RESULT, "rich queries (CouchDB)"),
    (Msg.GET_HISTORY_FOR_KEY, "history database"),
    (Msg.INVOKE_CHAINCODE, "chaincode-to-chaincode invocation"),
    (Msg.GET_STATE_METADATA, "state metadata"),
    (Msg.PUT_STATE_METADATA, "state metadata"),
    (Msg.GET_PRIVATE_DATA_HASH, "private data"),
    (Msg.PURGE_PRIVATE_DATA, "private data"),
    (Msg.WRITE_BATCH_STATE, "batched writes"),
    (Msg.GET_STATE_MULTIPLE, "batched reads"),
):
    _HANDLERS[_type] = _unsupported(_name)


def _error_reply(
    msg: chaincode_shim_pb2.ChaincodeMessage, reason: str
) -> chaincode_shim_pb2.ChaincodeMessage:
    text = f"{Msg.Type.Name(msg.type)} failed: transaction ID: {msg.txid}: {reason}"
    return Msg(type=Msg.ERROR, payload=text.encode(), txid=msg.txid, channel_id=msg.channel_id)


def _refuse_private(collection: str) -> None:
    if collection:
        raise _ShimRequestError(f"private data collections are not supported ({collection!r})")


def _check_write_allowed(ctx: _TxContext) -> None:
    if ctx.paginated_query_done:
        raise _ShimRequestError(
            "txn-simulator: transaction has already performed a paginated query. "
            "Writes are not allowed"
        )


def _next_batch(ctx: _TxContext, iter_id: str) -> bytes:
    it = ctx.iterators[iter_id]
    batch = it.results[it.position : it.position + QUERY_BATCH_SIZE]
    it.position += len(batch)
    resp = chaincode_shim_pb2.QueryResponse(id=iter_id)
    for key, value, version in batch:
        kv = kv_query_result_pb2.KV(namespace=ctx.namespace, key=key, value=value)
        resp.results.add(resultBytes=kv.SerializeToString())
        it.delivered.append(KVRead(key, version))
    resp.has_more = it.position < len(it.results)
    if it.paginated and not resp.has_more:
        resp.metadata = chaincode_shim_pb2.QueryResponseMetadata(
            fetched_records_count=len(it.results), bookmark=it.bookmark
        ).SerializeToString()
    if not resp.has_more:
        ctx._record_range(iter_id)
    return resp.SerializeToString()
