"""The stuck-saga sweeper: re-drives sagas that stopped moving, through the verify path.

A saga can stop moving without anything failing: its step message was lost (a
queue purged, a broker restored from an old disk), dead-lettered, or its chain
step's worker died between PREPARED and Submit while the watcher was down. The
store knows the saga waits; nobody is going to tell it anything. Each sweep:

1. **Candidates** (one index-backed query, ``ix_sagas_status_updated_at``):
   running or compensating sagas whose ``updated_at`` (the last state change)
   is older than the shortest step timeout plus the grace, and that have no
   unpublished outbox row (a delayed retry or a re-check is waiting its turn, or
   the relay is behind: not a lost message).

2. **Per saga**, in one transaction holding the saga's row lock: the current
   step's own ``timeout`` plus the grace must have passed. Then either

   - **re-drive**: a step message for the saga's *current* attempt goes to the
     outbox, the same message the watcher writes after a commit. A local step
     runs (or is found done) exactly as for the first message; a chain step
     goes through the executor's verify path, which asks the ledger about every
     recorded txid before anything is sent and never prepares a new transaction
     while one may still commit. Nothing is resubmitted blindly here. At most
     one re-drive per ``sweep_redrive_interval``, each one in the saga's history
     (``sweeper re-drive``, actor ``sweeper``) with the ``updated_at`` it saw;
   - or, after ``sweep_max_redrives`` re-drives that saw the same
     ``updated_at`` (no progress at all), **mark it for an operator**: status
     ``failed`` with the reason ``stuck: ...`` and the step ``failed`` (or
     ``compensation_failed`` while compensating), a ``marked stuck`` history
     entry. That is the state the machine itself leaves a saga in when a step
     gives up in doubt, so ``saga list --status failed`` shows it with its
     reason and ``saga resume ID`` re-drives it with a fresh attempt (verify
     path again for a chain step). Not marked while the step queue has a
     backlog over ``sweep_max_backlog``, its depth is unknown, or the outbox is
     behind: then the saga is slow, not stuck.

3. **Unsettled ledger attempts of terminal sagas**: the watcher follows every
   attempt that is not COMMITTED, forever, oldest first, so an attempt that will
   never commit (prepared and never submitted by a worker that died, on a saga
   that then failed in doubt) holds one of its slots for good. The sweeper asks
   the ledger once more (CommitStatus, short deadline) and records a commit it
   learns; an attempt still unknown after ``sweep_abandon_after`` is given up:
   recorded as committed with Fabric's NOT_VALIDATED code (254) and a history
   entry naming it, so the watcher stops. Its envelope is never resubmitted:
   the saga is terminal, and a compensated saga must not gain a ledger effect.
   If it ever did commit VALID, ``saga audit`` reports it (a VALID transaction
   for a step not done), and a resumed step's verify pass finds it through the
   chaincode's idempotency record.

Every sweep is safe to run twice at once (two beat messages, an operator's
``saga sweep`` beside beat): each decision is taken again under the row lock
against the history the other sweep may have just written.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from saga.core.definitions import Registry
from saga.core.errors import OrchestrationError
from saga.core.machine import awaited_command, transition
from saga.core.messages import Command, MarkedStuck, RunCompensation
from saga.core.step_message import StepMessage
from saga.ports.ledger import Ledger, LedgerError
from saga.ports.store import (
    HistoryEntry,
    LedgerAttemptRecord,
    OutboxMessage,
    SagaRecord,
    UnitOfWork,
    UnitOfWorkFactory,
)
from saga.ports.telemetry import NO_TELEMETRY, Telemetry

if TYPE_CHECKING:
    from saga.config import Settings

log = logging.getLogger("saga.sweeper")

ACTOR = "sweeper"
REDRIVE = "sweeper re-drive"
STUCK = "marked stuck"
ATTEMPT_SETTLED = "sweeper settled ledger attempt"
ATTEMPT_GIVEN_UP = "sweeper gave up ledger attempt"
# Fabric's TxValidationCode NOT_VALIDATED: the truthful "no validation was ever
# seen"; any code but VALID is final-invalid to the verify path, which then reads
# the chaincode's idempotency record before anything new is prepared.
NOT_VALIDATED = 254


@dataclass(frozen=True)
class SweepConfig:
    grace: float = 120.0
    redrive_interval: float = 300.0
    max_redrives: int = 3
    batch_size: int = 500
    max_backlog: int = 10_000
    abandon_after: float = 3600.0
    # Terminal sagas' attempts asked about per sweep (each ask may wait status_timeout).
    attempts_per_sweep: int = 50
    status_timeout: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SweepConfig:
        return cls(
            grace=settings.sweep_grace,
            redrive_interval=settings.sweep_redrive_interval,
            max_redrives=settings.sweep_max_redrives,
            batch_size=settings.sweep_batch_size,
            max_backlog=settings.sweep_max_backlog,
            abandon_after=settings.sweep_abandon_after,
            status_timeout=settings.fabric_status_timeout,
        )


@dataclass
class SweepReport:
    candidates: int = 0
    redriven: list[str] = field(default_factory=list)
    marked_stuck: list[str] = field(default_factory=list)
    # Over its step's own timeout not yet, or re-driven too recently.
    not_due: int = 0
    rate_limited: int = 0
    # Would have been marked, but the queue or outbox is behind (or unknown).
    held_by_backlog: int = 0
    attempts_settled: list[str] = field(default_factory=list)
    attempts_given_up: list[str] = field(default_factory=list)
    attempts_unknown: int = 0
    backlog: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Clock = Callable[[], datetime]
# Messages waiting in the step queue, or None if the broker did not say.
BacklogProbe = Callable[[], int | None]


class Verdict(StrEnum):
    """What sweeping one saga came to."""

    GONE = "gone"  # no such saga any more
    NOT_WAITING = "not-waiting"  # it awaits no command
    NOT_DUE = "not-due"  # its step's timeout has not run out
    RATE_LIMITED = "rate-limited"  # over this pass's re-drive budget
    CHECK_BACKLOG = "check-backlog"  # would be marked stuck: ask the broker's backlog first
    BACKLOG = "backlog"  # not marked: the queues or the outbox lag behind
    STUCK = "stuck"  # marked stuck
    REDRIVEN = "redriven"  # its awaited command was sent again


class Sweeper:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        registry: Registry,
        config: SweepConfig | None = None,
        *,
        ledger: Callable[[], Ledger] | None = None,
        backlog: BacklogProbe | None = None,
        clock: Clock = lambda: datetime.now(UTC),
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        """`backlog` None: no broker to ask (tests driving the store alone); the
        outbox lag is still checked before any saga is marked. The composition root
        gives the broker-admin port's step queue depth (QueueAdmin.step_queue_depth)."""
        self._telemetry = telemetry
        self._uow = uow_factory
        self._registry = registry
        self.config = config or SweepConfig()
        self._ledger = ledger
        self._backlog = backlog
        self._clock = clock
        self._new_id = new_id

    # -- the sweep ----------------------------------------------------------------------

    def sweep(self, *, saga_id: str | None = None) -> SweepReport:
        """One pass; with `saga_id`, only that saga (an operator's `saga sweep --saga`)."""
        report = SweepReport()
        now = self._clock()
        ids = [saga_id] if saga_id else self.candidates(now)
        report.candidates = len(ids)
        backlog_checked = False
        backlog_ok = False
        for sid in ids:
            try:
                verdict = self._sweep_one(sid, now, backlog_ok if backlog_checked else None)
                if verdict is Verdict.CHECK_BACKLOG:
                    backlog_checked, backlog_ok = True, self._may_mark(report)
                    verdict = self._sweep_one(sid, now, backlog_ok)
            except OrchestrationError as exc:
                log.warning("sweeping a saga failed", extra={"saga_id": sid, "error": str(exc)})
                continue
            self._tally(report, sid, verdict)
        if saga_id is None:
            self._sweep_attempts(now, report)
        if report.redriven or report.marked_stuck or report.attempts_given_up:
            log.info(
                "sweep done",
                extra={
                    k: v if isinstance(v, int) else len(v)
                    for k, v in report.as_dict().items()
                    if v is not None
                },
            )
        return report

    def candidates(self, now: datetime) -> list[str]:
        """Ids of sagas that may be stuck, least recently updated first (index-backed)."""
        cutoff = now - timedelta(seconds=self._shortest_timeout() + self.config.grace)
        with self._uow() as uow:
            return uow.sagas.idle(updated_before=cutoff, limit=self.config.batch_size)

    def _shortest_timeout(self) -> float:
        timeouts = [s.timeout for d in self._registry for s in d.steps]
        return min(timeouts, default=0.0)

    @staticmethod
    def _tally(report: SweepReport, saga_id: str, verdict: Verdict) -> None:
        if verdict is Verdict.REDRIVEN:
            report.redriven.append(saga_id)
        elif verdict is Verdict.STUCK:
            report.marked_stuck.append(saga_id)
        elif verdict is Verdict.RATE_LIMITED:
            report.rate_limited += 1
        elif verdict is Verdict.BACKLOG:
            report.held_by_backlog += 1
        else:
            report.not_due += 1

    def _sweep_one(self, saga_id: str, now: datetime, may_mark: bool | None) -> Verdict:
        """One saga under its row lock; returns what was done (or CHECK_BACKLOG)."""
        cfg = self.config
        with self._uow() as uow:
            record = uow.sagas.get(saga_id, for_update=True)
            if record is None or record.updated_at is None:
                return Verdict.GONE
            state = record.state
            command = awaited_command(state)
            if command is None:
                return Verdict.NOT_WAITING
            definition = self._registry.get(state.name, state.version)
            step = definition.steps[state.current]
            idle = (now - record.updated_at).total_seconds()
            if idle < step.timeout + cfg.grace:
                return Verdict.NOT_DUE
            progress = record.updated_at.isoformat()
            earlier = [
                h
                for h in uow.history.for_saga(saga_id)
                if h.kind == REDRIVE and h.detail.get("progress_at") == progress
            ]
            if earlier:
                since = (now - max(h.at for h in earlier)).total_seconds()
                if since < cfg.redrive_interval:
                    return Verdict.RATE_LIMITED
            if len(earlier) >= cfg.max_redrives:
                if may_mark is None:
                    return Verdict.CHECK_BACKLOG
                if not may_mark:
                    return Verdict.BACKLOG
                self._mark_stuck(uow, record, command, idle, len(earlier), now)
                uow.commit()
                self._telemetry.sweeper_marked_stuck()
                return Verdict.STUCK
            message = StepMessage.for_command(state, command, self._new_id())
            uow.outbox.add(OutboxMessage(message.message_id, saga_id, message.to_body()))
            uow.history.add(
                HistoryEntry(
                    now,
                    saga_id,
                    REDRIVE,
                    {
                        "step": command.step,
                        "phase": str(message.phase),
                        "attempt": command.attempt,
                        "idle_seconds": round(idle, 1),
                        "redrive": len(earlier) + 1,
                        "of": cfg.max_redrives,
                        "message_id": message.message_id,
                        "progress_at": progress,
                    },
                    ACTOR,
                )
            )
            uow.commit()
        self._telemetry.sweeper_redrove()
        log.info(
            "saga re-driven",
            extra={
                "saga_id": saga_id,
                "step": command.step,
                "attempt": command.attempt,
                "idle_seconds": round(idle, 1),
                "redrive": len(earlier) + 1,
            },
        )
        return Verdict.REDRIVEN

    def _mark_stuck(
        self,
        uow: UnitOfWork,
        record: SagaRecord,
        command: Command,
        idle: float,
        redrives: int,
        now: datetime,
    ) -> None:
        state = record.state
        phase = "undo" if isinstance(command, RunCompensation) else "do"
        why = (
            f"no progress at step {command.step!r} ({phase}, attempt {command.attempt}) "
            f"for {idle:.0f}s after {redrives} re-drive(s)"
        )
        definition = self._registry.get(state.name, state.version)
        new = transition(definition, state, MarkedStuck(ACTOR, why)).state
        uow.sagas.save(replace(record, state=new, updated_at=now))
        uow.history.add(
            HistoryEntry(
                now,
                state.saga_id,
                STUCK,
                {
                    "step": command.step,
                    "attempt": command.attempt,
                    "was": str(state.status),
                    "redrives": redrives,
                    "idle_seconds": round(idle, 1),
                    "reason": new.reason,
                },
                ACTOR,
            )
        )
        log.warning("saga marked stuck", extra={"saga_id": state.saga_id, "reason": new.reason})

    def _may_mark(self, report: SweepReport) -> bool:
        """False while messages are merely slow: a queue backlog or an outbox behind."""
        lag = self._outbox_lag()
        if lag is not None and lag > self.config.grace:
            log.warning("outbox is behind; no saga is marked stuck", extra={"lag": lag})
            return False
        if self._backlog is None:
            return True
        depth = self._backlog()
        report.backlog = depth
        if depth is None or depth > self.config.max_backlog:
            log.warning(
                "step queue backlog too deep or unknown; no saga is marked stuck",
                extra={"depth": depth, "max_backlog": self.config.max_backlog},
            )
            return False
        return True

    def _outbox_lag(self) -> float | None:
        """The oldest due message's wait, by the store's own clock."""
        with self._uow() as uow:
            return uow.outbox.oldest_unpublished_age()

    # -- terminal sagas' unsettled ledger attempts --------------------------------------

    def _sweep_attempts(self, now: datetime, report: SweepReport) -> None:
        if self._ledger is None:
            return
        older = now - timedelta(seconds=self.config.grace)
        with self._uow() as uow:
            rows = uow.ledger_attempts.unsettled_of_terminal_sagas(
                older_than=older, limit=self.config.attempts_per_sweep
            )
        if not rows:
            return
        ledger = self._ledger()
        for row in rows:
            try:
                result = ledger.commit_status(
                    row.channel, row.txid, timeout=self.config.status_timeout
                )
            except LedgerError as exc:
                created = row.created_at or now
                if (now - created).total_seconds() < self.config.abandon_after:
                    report.attempts_unknown += 1
                    continue
                self._record_attempt(
                    row, NOT_VALIDATED, None, ATTEMPT_GIVEN_UP, f"{type(exc).__name__}: {exc}", now
                )
                report.attempts_given_up.append(row.txid)
                continue
            self._record_attempt(
                row, result.code, result.block_number, ATTEMPT_SETTLED, result.code_name, now
            )
            report.attempts_settled.append(row.txid)

    def _record_attempt(
        self,
        row: LedgerAttemptRecord,
        code: int,
        block: int | None,
        kind: str,
        detail: str,
        now: datetime,
    ) -> None:
        with self._uow() as uow:
            # The saga row first, in the order the worker and the watcher lock them.
            uow.sagas.get(row.saga_id, for_update=True)
            if not uow.ledger_attempts.mark_committed(row.txid, code, block):
                return
            uow.history.add(
                HistoryEntry(
                    now,
                    row.saga_id,
                    kind,
                    {
                        "step": row.step,
                        "purpose": row.purpose,
                        "txid": row.txid,
                        "state_was": str(row.state),
                        "code": code,
                        "block": block,
                        "why": detail,
                    },
                    ACTOR,
                )
            )
            uow.commit()
        result = "settled" if kind == ATTEMPT_SETTLED else "given_up"
        self._telemetry.sweeper_settled_attempt(result)
        log.info(kind, extra={"saga_id": row.saga_id, "txid": row.txid, "code": code})
