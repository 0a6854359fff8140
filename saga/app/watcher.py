"""The commit watcher: follows submitted chain transactions and settles their steps.

One asyncio process follows the commits of thousands of chain transactions, so
no worker process or thread ever waits on a block. It loops:

    unsettled = store.ledger_attempts.unsettled(...)     # in a thread: sync SQLAlchemy
    for each txid not yet followed:                      # bounded concurrency
        result = await gateway.commit_status(channel, txid, timeout=...)
        in ONE database transaction:
            lock the saga row
            mark_committed(txid, code, block)            # first answer wins
            if first and the saga still waits on that step (its current attempt):
                VALID: the step succeeded (settle_valid)  # state, next messages, history
                else:  outbox.add(StepMessage(current attempt)) # the relay publishes it

A VALID code is final and is all the verify path would need to call the step
done, so recording it here spares the step a message and a task. For any other
code the worker that receives the message runs the verify path and decides what
next. Without `settle_valid` (or when it cannot record the success) a VALID
commit gets the message too.
A wait that reaches its deadline (the orderer may have dropped the envelope, or
the worker died between PREPARED and Submit) re-drives the step too, at most once
per ``redrive_interval`` per txid, so the verify path resubmits the same envelope.

Why CommitStatus calls and not block events: the Gateway's ChaincodeEvents
stream carries only chaincode events, and the python chaincode library cannot
emit them (``stub.set_event`` is stored but never sent; see chaincode/README.md);
a peer's Deliver service (full or filtered blocks) is not served by the devnet.
CommitStatus is a plain Gateway call every Fabric 2.4+ peer serves, answers at
once for a transaction already committed, and costs one HTTP/2 stream while
it waits. A Fabric peer admits ``peer.limits.concurrency.gatewayService`` (500
by default) concurrent gateway calls, so at most ``max_in_flight`` waits are on
the wire; the others queue here, as coroutines.

A watcher that dies loses nothing: the store is its only state (attempts not
yet COMMITTED), so a restart picks every one up again, and a commit that
happened meanwhile is answered at once. Two watchers at once are safe too:
``mark_committed`` lets only the first answer write the message. The stuck-saga
sweeper re-verifies anything older than its threshold, whatever the watcher did.

A peer or database outage is retried with capped exponential backoff (the
gRPC channel is reopened after a peer outage); SIGTERM and Ctrl-C stop it
cleanly, and it logs its counters on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from saga.app.relay import Backoff
from saga.core.machine import awaited_command
from saga.core.messages import Command, RunStep
from saga.core.purpose import Purpose
from saga.core.state import SagaState
from saga.core.step_message import StepMessage
from saga.failpoints import failpoint
from saga.ports.ledger import CommitResult, StatusUnknown, Unanswered
from saga.ports.store import (
    HistoryEntry,
    LedgerAttemptRecord,
    OutboxMessage,
    SagaRecord,
    StoreUnavailable,
    UnitOfWork,
    UnitOfWorkFactory,
)
from saga.ports.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger("saga.watcher")

# Re-drive messages of a commit get an id derived from the txid, so the outbox's
# unique message id refuses a second one even if two watchers both got past
# mark_committed (they cannot: first answer wins; this is the belt to those braces).
_COMMIT_NAMESPACE = uuid.UUID("6f1d3a4e-0c55-4d0f-9a57-2b3f6c1e9d21")


class CommitClient(Protocol):
    """What the watcher needs of a Gateway client (AsyncGatewayClient fits)."""

    async def commit_status(
        self, channel: str, txid: str, *, timeout: float | None = None
    ) -> CommitResult: ...

    async def close(self) -> None: ...


# Opens a client inside the running loop (grpc.aio channels are bound to it).
ClientFactory = Callable[[], CommitClient | Awaitable[CommitClient]]


@dataclass(frozen=True)
class WatcherConfig:
    # Concurrent CommitStatus calls on the one client; keep below the peer's
    # gatewayService limit (500 by default) minus what workers use: with one chain
    # executor at its default 200 calls, 250 leaves the API, sweeper and local-step
    # workers 50 (400 let the two together be refused "exceeding concurrency limit").
    max_in_flight: int = 250
    # How many unsettled attempts are followed at once (waits queued here beyond
    # max_in_flight cost a coroutine each).
    max_tracked: int = 5_000
    # Pause between store polls when nothing new turned up.
    poll_interval: float = 0.5
    # Deadline of one CommitStatus wait; Fabric's own has none.
    wait_timeout: float = 30.0
    # After a wait hit its deadline, this long before the txid is waited on again.
    rewait_after: float = 5.0
    # At most one deadline re-drive per txid this often.
    redrive_interval: float = 60.0
    # Threads doing database work (each holds a pooled connection while it runs).
    db_threads: int = 4
    # Seconds between "watcher status" log lines with the counters (0: never).
    status_interval: float = 30.0
    # Backoff on peer and database outages.
    backoff_initial: float = 0.5
    backoff_max: float = 15.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.max_tracked < 1 or self.db_threads < 1:
            raise ValueError("max_in_flight, max_tracked and db_threads must be at least 1")
        if self.wait_timeout <= 0 or self.poll_interval <= 0:
            raise ValueError("wait_timeout and poll_interval must be positive")


@dataclass
class WatcherStats:
    polls: int = 0
    followed: int = 0
    settled: int = 0
    settled_valid: int = 0
    settled_invalid: int = 0
    # Settled by someone else first (a worker's verify path, another watcher).
    already_settled: int = 0
    redriven_commit: int = 0
    # VALID commits whose step's success the watcher recorded itself (no message).
    steps_done: int = 0
    redriven_deadline: int = 0
    deadlines: int = 0
    peer_errors: int = 0
    store_errors: int = 0
    reconnects: int = 0
    in_flight: int = 0
    tracked: int = 0
    max_in_flight_seen: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["elapsed"] = round(time.monotonic() - data.pop("started"), 3)
        return data


@dataclass(frozen=True)
class Settled:
    first: bool
    redriven: bool
    # The step's success was recorded here, in the commit's transaction.
    step_done: bool = False


# Records the success of the awaited chain step whose transaction committed VALID,
# in the watcher's transaction with the saga locked (Orchestrator.settle_valid_commit);
# False: it could not (the step is sent its message instead).
SettleValid = Callable[[UnitOfWork, SagaRecord, StepMessage, str], bool]


def awaited_for(state: SagaState, step: str, purpose: str) -> Command | None:
    """The command the saga awaits now, if it is for (step, purpose); else None."""
    command = awaited_command(state)
    if command is None or command.step != step:
        return None
    wanted = Purpose.DO if isinstance(command, RunStep) else Purpose.UNDO
    return command if purpose == wanted else None


def redrive_message(state: SagaState, command: Command, message_id: str) -> OutboxMessage:
    message = StepMessage.for_command(state, command, message_id)
    return OutboxMessage(message_id=message_id, saga_id=state.saga_id, body=message.to_body())


def commit_message_id(txid: str) -> str:
    return str(uuid.uuid5(_COMMIT_NAMESPACE, txid))


class CommitWatcher:
    """Follows unsettled ledger attempts until stopped; see the module docstring."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        connect: ClientFactory,
        config: WatcherConfig | None = None,
        *,
        telemetry: Telemetry = NO_TELEMETRY,
        stats: WatcherStats | None = None,
        settle_valid: SettleValid | None = None,
    ) -> None:
        """`stats`: the counters to keep (an entry point serving them at scrape time
        makes them first); `telemetry` hears each commit seen. `settle_valid`: given,
        a VALID commit of the step the saga awaits is recorded as the step's success
        right here; without it (or for an invalid code) the step gets a message."""
        self.config = config or WatcherConfig()
        self._settle_valid = settle_valid
        self.stats = stats if stats is not None else WatcherStats()
        self._telemetry = telemetry
        self._uow = uow_factory
        self._connect = connect
        self._client: CommitClient | None = None
        self._slots = asyncio.Semaphore(self.config.max_in_flight)
        # txid -> its task; a txid is never followed twice at once.
        self._tracked: dict[str, asyncio.Task[None]] = {}
        # txid -> monotonic time before which it is not followed again.
        self._cooling: dict[str, float] = {}
        self._last_redrive: dict[str, float] = {}
        self._peer_ok = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._peer_backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        self._store_backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.db_threads, thread_name_prefix="watcher-db"
        )

    # -- running ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> WatcherStats:
        cfg = self.config
        log.info(
            "watcher started",
            extra={
                "max_in_flight": cfg.max_in_flight,
                "wait_timeout": cfg.wait_timeout,
                "poll_interval": cfg.poll_interval,
            },
        )
        last_status = time.monotonic()
        try:
            await self._open_client()
            while not stop.is_set():
                if cfg.status_interval and time.monotonic() - last_status >= cfg.status_interval:
                    last_status = time.monotonic()
                    log.info("watcher status", extra=self.stats.as_dict())
                try:
                    new = await self._poll()
                except Exception as exc:
                    self.stats.store_errors += 1
                    delay = self._store_backoff.next()
                    log.warning(
                        "polling the store failed; retrying",
                        extra={"error": _describe(exc), "retry_in": round(delay, 2)},
                        exc_info=self._store_backoff.failures == 1,
                    )
                    await _wait(stop, delay)
                    continue
                if self._store_backoff.failures:
                    log.info("store reachable again")
                    self._store_backoff.reset()
                if new == 0:
                    self._wake.clear()
                    pause = cfg.poll_interval
                    if cfg.status_interval:
                        pause = min(pause, cfg.status_interval)
                    await _wait(stop, pause, self._wake)
        finally:
            await self._shutdown()
        return self.stats

    async def _poll(self) -> int:
        """Start following every unsettled attempt not followed yet; how many were new."""
        now = time.monotonic()
        self._cooling = {t: until for t, until in self._cooling.items() if until > now}
        room = self.config.max_tracked - len(self._tracked)
        if room <= 0:
            return 0
        # Oldest first: ask for enough rows to see `room` that are neither followed
        # nor cooling, whatever they are.
        limit = room + len(self._tracked) + len(self._cooling)
        records = await self._in_thread(self._load_unsettled, limit)
        self.stats.polls += 1
        new = 0
        for record in records:
            txid = record.txid
            if txid in self._tracked or txid in self._cooling:
                continue
            if new >= room:
                break
            self._tracked[txid] = asyncio.create_task(self._follow(record), name=f"follow {txid}")
            new += 1
        self.stats.followed += new
        self.stats.tracked = len(self._tracked)
        return new

    def _load_unsettled(self, limit: int) -> list[LedgerAttemptRecord]:
        with self._uow() as uow:
            return uow.ledger_attempts.unsettled(limit=limit)

    async def _follow(self, record: LedgerAttemptRecord) -> None:
        txid = record.txid
        cool_for = 0.0
        client: CommitClient | None = None
        try:
            async with self._slots:
                await self._peer_ok.wait()
                client = self._client
                assert client is not None
                self.stats.in_flight += 1
                self.stats.max_in_flight_seen = max(
                    self.stats.max_in_flight_seen, self.stats.in_flight
                )
                try:
                    result = await client.commit_status(
                        record.channel, txid, timeout=self.config.wait_timeout
                    )
                finally:
                    self.stats.in_flight -= 1
            self._peer_backoff.reset()
            await self._settle(record, result)
            # A poll that read the store before this commit still lists the txid;
            # skipping it for a while spares a second CommitStatus call.
            cool_for = max(10.0, 4 * self.config.poll_interval)
        except StatusUnknown as exc:
            cool_for = await self._unknown(record, exc, client)
        except Exception as exc:
            # Most likely the database; the attempt is still unsettled in the store,
            # so the next poll after the cool-down follows it again.
            self.stats.store_errors += 1
            cool_for = self._store_backoff.next()
            log.warning(
                "recording a commit failed; it is retried",
                extra={"txid": txid, "error": _describe(exc), "retry_in": round(cool_for, 2)},
                exc_info=self._store_backoff.failures == 1,
            )
        finally:
            was_full = len(self._tracked) >= self.config.max_tracked
            self._tracked.pop(txid, None)
            if cool_for > 0:
                self._cooling[txid] = time.monotonic() + cool_for
            self.stats.tracked = len(self._tracked)
            if was_full:
                # The poll stopped taking work for want of room; there is room now.
                self._wake.set()

    async def _settle(self, record: LedgerAttemptRecord, result: CommitResult) -> None:
        # Shielded: a stop must not abandon a transaction half way; the executor's
        # shutdown waits for it.
        settled = await asyncio.shield(self._in_thread(self._record_commit_safely, record, result))
        self._last_redrive.pop(record.txid, None)
        if not settled.first:
            self.stats.already_settled += 1
            return
        self.stats.settled += 1
        self._telemetry.watcher_committed(record, result.valid)
        if result.valid:
            self.stats.settled_valid += 1
        else:
            self.stats.settled_invalid += 1
        if settled.redriven:
            self.stats.redriven_commit += 1
        if settled.step_done:
            self.stats.steps_done += 1
        log.info(
            "transaction committed",
            extra={
                "txid": record.txid,
                "saga_id": record.saga_id,
                "step": record.step,
                "purpose": record.purpose,
                "code": result.code_name,
                "block": result.block_number,
                "redriven": settled.redriven,
                "step_done": settled.step_done,
            },
        )

    def _record_commit_safely(self, record: LedgerAttemptRecord, result: CommitResult) -> Settled:
        """_record_commit; if recording the step's success fails (a bug, a definition
        that no longer loads), the commit is recorded again with a message instead,
        so the step is never left without one (its executor reports the failure)."""
        if self._settle_valid is None or not result.valid:
            return self._record_commit(record, result, settle=False)
        try:
            return self._record_commit(record, result, settle=True)
        except StoreUnavailable:
            raise
        except Exception as exc:
            log.error(
                "recording the step's success with its commit failed; the step is sent "
                "its message instead",
                extra={"txid": record.txid, "saga_id": record.saga_id, "error": _describe(exc)},
                exc_info=True,
            )
            return self._record_commit(record, result, settle=False)

    def _record_commit(
        self, record: LedgerAttemptRecord, result: CommitResult, *, settle: bool
    ) -> Settled:
        with self._uow() as uow:
            # The saga row is locked before the attempt row, in the order the
            # worker's verify path takes them: the other order could deadlock.
            saga = uow.sagas.get(record.saga_id, for_update=True)
            first = uow.ledger_attempts.mark_committed(
                record.txid, result.code, result.block_number
            )
            if not first:
                return Settled(first=False, redriven=False)
            command = None if saga is None else awaited_for(saga.state, record.step, record.purpose)
            if saga is None or command is None:
                woke = "none (the saga no longer waits for this attempt)"
                _note(uow, record, "ledger committed", _committed(result, woke))
                uow.commit()
                return Settled(first=True, redriven=False)
            message = StepMessage.for_command(saga.state, command, commit_message_id(record.txid))
            if not settle or self._settle_valid is None:
                # The step message is the normal path after a commit, not a re-drive:
                # "redriven" on the history is kept for the deadline's re-drive.
                uow.outbox.add(redrive_message(saga.state, command, message.message_id))
                _note(uow, record, "ledger committed", _committed(result, "sent"))
                uow.commit()
                return Settled(first=True, redriven=True)
            # History reads: the commit, then what the step's success did.
            woke = "none: the step's success is recorded with the commit"
            _note(uow, record, "ledger committed", _committed(result, woke))
            if self._settle_valid(uow, saga, message, record.txid):
                failpoint("watcher.before_settle_commit", record.step, record.purpose)
                uow.commit()
                failpoint("watcher.after_settle_commit", record.step, record.purpose)
                return Settled(first=True, redriven=False, step_done=True)
            uow.rollback()
        return self._record_commit(record, result, settle=False)

    async def _unknown(
        self, record: LedgerAttemptRecord, exc: StatusUnknown, client: CommitClient | None
    ) -> float:
        """A wait ended without an answer; returns how long before following it again."""
        unanswered = exc.unanswered
        if unanswered is Unanswered.DEADLINE:
            self.stats.deadlines += 1
            await self._deadline_redrive(record)
            return self.config.rewait_after
        self.stats.peer_errors += 1
        if unanswered is Unanswered.UNREACHABLE:
            # Calls cut by the reconnect itself (the old channel closed) say nothing
            # about the new one.
            if client is self._client:
                self._peer_trouble(exc)
            return 0.0
        # A refusal (permission, unknown channel, ...) will not mend by itself soon.
        log.error(
            "commit status refused",
            extra={"txid": record.txid, "channel": record.channel, "error": str(exc)},
        )
        return self.config.redrive_interval

    async def _deadline_redrive(self, record: LedgerAttemptRecord) -> None:
        now = time.monotonic()
        last = self._last_redrive.get(record.txid)
        if last is not None and now - last < self.config.redrive_interval:
            return
        self._last_redrive[record.txid] = now
        try:
            redriven = await asyncio.shield(self._in_thread(self._record_deadline, record))
        except Exception as exc:
            self.stats.store_errors += 1
            log.warning(
                "re-driving a step after a commit deadline failed",
                extra={"txid": record.txid, "error": _describe(exc)},
            )
            return
        if redriven:
            self.stats.redriven_deadline += 1
        log.info(
            "no commit within the deadline",
            extra={
                "txid": record.txid,
                "saga_id": record.saga_id,
                "step": record.step,
                "wait_timeout": self.config.wait_timeout,
                "redriven": redriven,
            },
        )

    def _record_deadline(self, record: LedgerAttemptRecord) -> bool:
        with self._uow() as uow:
            saga = uow.sagas.get(record.saga_id, for_update=True)
            if saga is None:
                return False
            command = awaited_for(saga.state, record.step, record.purpose)
            if command is None:
                return False
            uow.outbox.add(redrive_message(saga.state, command, str(uuid.uuid4())))
            _note(uow, record, "ledger commit deadline", {"redriven": True})
            uow.commit()
            return True

    # -- the peer -----------------------------------------------------------------------

    async def _open_client(self) -> None:
        opened = self._connect()
        self._client = await opened if inspect.isawaitable(opened) else opened
        self._peer_ok.set()

    def _peer_trouble(self, exc: BaseException) -> None:
        if self._reconnecting is not None and not self._reconnecting.done():
            return
        self._peer_ok.clear()
        delay = self._peer_backoff.next()
        log.warning(
            "peer unavailable; reconnecting",
            extra={"error": str(exc), "retry_in": round(delay, 2)},
        )
        self._reconnecting = asyncio.create_task(self._reconnect(delay))

    async def _reconnect(self, delay: float) -> None:
        await asyncio.sleep(delay)
        old, self._client = self._client, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        while True:
            try:
                await self._open_client()
                break
            except Exception as exc:
                delay = self._peer_backoff.next()
                log.warning(
                    "opening the gateway client failed",
                    extra={"error": _describe(exc), "retry_in": round(delay, 2)},
                )
                await asyncio.sleep(delay)
        self.stats.reconnects += 1

    # -- plumbing -----------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _shutdown(self) -> None:
        tasks = list(self._tracked.values())
        if self._reconnecting is not None:
            tasks.append(self._reconnecting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Lets a transaction already handed to a thread commit (or fail) whole.
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._executor.shutdown(wait=True)
        )
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        log.info("watcher stopped", extra=self.stats.as_dict())


def _committed(result: CommitResult, step_message: str) -> dict[str, Any]:
    return {"code": result.code_name, "block": result.block_number, "step_message": step_message}


def _note(uow: UnitOfWork, record: LedgerAttemptRecord, kind: str, detail: dict[str, Any]) -> None:
    detail = {"step": record.step, "purpose": record.purpose, "txid": record.txid, **detail}
    uow.history.add(HistoryEntry(datetime.now(UTC), record.saga_id, kind, detail, "watcher"))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _wait(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def run_watcher(
    uow_factory: UnitOfWorkFactory,
    connect: ClientFactory,
    stop: threading.Event,
    config: WatcherConfig | None = None,
    *,
    telemetry: Telemetry = NO_TELEMETRY,
    stats: WatcherStats | None = None,
    settle_valid: SettleValid | None = None,
) -> WatcherStats:
    """Run the watcher in a fresh event loop until ``stop`` is set (from any thread)."""

    async def main() -> WatcherStats:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        threading.Thread(
            target=lambda: (stop.wait(), loop.call_soon_threadsafe(stopped.set)),
            name="watcher-stop",
            daemon=True,
        ).start()
        watcher = CommitWatcher(
            uow_factory,
            connect,
            config,
            telemetry=telemetry,
            stats=stats,
            settle_valid=settle_valid,
        )
        return await watcher.run(stopped)

    return asyncio.run(main())


__all__ = [
    "CommitClient",
    "CommitWatcher",
    "WatcherConfig",
    "WatcherStats",
    "awaited_for",
    "commit_message_id",
    "run_watcher",
]
