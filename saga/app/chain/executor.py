"""Runs one chain step message: verify what is recorded, then do the one safe next move.

The flow for a RunStep / RunCompensation of a chain step (DESIGN.md, "The chain
step protocol"); no database transaction or saga row lock is held during any
ledger call:

  (a) tx: lock the saga, check it awaits the message, read the step's attempts.
  (b) ask commit_status (short deadline) for every attempt not yet COMMITTED.
  (c) `saga.core.chain.decide`; on AskKey read GetRecord(key) and decide again.
  (d) Done       -> tx: the step succeeded (state machine, inbox, outbox).
      Resubmit   -> submit the stored envelopes unchanged; tx: mark SUBMITTED,
                    inbox, a delayed re-check message. The step stays pending.
      PrepareNew -> endorse; tx: persist PREPARED if the attempts are unchanged
                    since (a) (else start over) with the delayed re-check message;
                    submit; mark SUBMITTED (one row, no saga lock). A step back
                    from a ledger outage instead records LedgerReached, the inbox
                    and the re-check in one tx after the submit.
  (e) failures go through the state machine as StepFailed / CompensationFailed,
      in doubt whenever a transaction of the step may still commit. A ledger that
      cannot be reached is no failure: the step waits (LedgerWait, same attempt,
      growing delay) under the outage budget, and only an exhausted budget or a
      misconfiguration hands the saga to an operator (saga.core.ledger_faults).

The worker never waits for a block. The commit watcher records a VALID commit's
success itself (`settle_valid`, in its own transaction); any other commit code
becomes the watcher's message, which, like the delayed re-check message, drives
the step again through this same verify path.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from saga.app.chain.errors import (
    ChaincodeRefused,
    EndorsementFailed,
    LedgerNotConfigured,
    LedgerOutcomeUnknown,
    TransactionsInvalid,
)
from saga.app.outcome import Outcome
from saga.core import sagafacts
from saga.core.chain import (
    VALID,
    AskKey,
    Attempt,
    AttemptState,
    Committed,
    Decision,
    Done,
    KeyAnswer,
    KeyCheck,
    KeyPresent,
    PrepareNew,
    Resubmit,
    Unknown,
    decide,
    final_code,
)
from saga.core.definitions import (
    ChainCall,
    SagaDefinition,
    Step,
    StepContext,
    chain_key,
)
from saga.core.ledger_faults import FaultKind
from saga.core.ledger_parts import part_down
from saga.core.machine import why_not_awaited
from saga.core.messages import (
    CompensationFailed,
    CompensationSucceeded,
    Event,
    LedgerReached,
    LedgerWait,
    StepFailed,
    StepSucceeded,
)
from saga.core.purpose import Purpose
from saga.core.retry import OutagePolicy, error_names
from saga.core.step_message import MalformedMessage, StepMessage
from saga.failpoints import failpoint
from saga.ports.ledger import EndorseFailed, Ledger, LedgerError, PreparedTx, StatusUnknown
from saga.ports.store import LedgerAttemptRecord, SagaRecord, StoreUnavailable, UnitOfWork
from saga.ports.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger("saga.chain")

# How often one message starts over because another worker changed the step's
# attempts between our read and our write; beyond that the message is retried later.
MAX_ROUNDS = 5


class ConcurrentChainStep(StoreUnavailable):
    """Other workers kept changing this chain step's attempts; the message is retried."""


def _default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ChainSettings:
    """How the executor talks to the ledger (built from SAGA_FABRIC_* settings)."""

    channel: str = "mychannel"
    # Deadline of each commit_status asked in the verify pass: short, because an
    # unknown answer is a safe answer (the envelope is resubmitted, not replaced).
    status_timeout: float = 2.0
    endorse_timeout: float | None = None
    submit_timeout: float | None = None
    evaluate_timeout: float | None = None
    # Delay of the re-check message sent after a submit, so a step progresses
    # even without the commit watcher; 0 leaves it to the watcher alone.
    recheck_delay: float = 30.0
    worker: str = field(default_factory=_default_worker)
    # Final-invalid transactions (MVCC conflicts, unknown codes) a step may collect
    # before it fails instead of preparing another one: without a bound, a ledger
    # that invalidates everything is sent a new transaction on every re-check.
    max_invalid_transactions: int = 5
    # How long a step waits for an unreachable ledger before an operator is asked
    # (SAGA_CHAIN_OUTAGE_BUDGET); the wait spends none of the step's attempts.
    outage: OutagePolicy = field(default_factory=OutagePolicy)


class ChainStepHooks(Protocol):
    """The recorder the executor writes through: the same `SagaWriter`
    (saga.app.transitions) the step handler uses, given to both by whoever builds
    them (the Orchestrator, from the parts it is given); never the orchestrator."""

    def apply_event(
        self,
        uow: UnitOfWork,
        record: SagaRecord,
        definition: SagaDefinition,
        message: StepMessage,
        event: Event,
        output: Mapping[str, Any] | None,
    ) -> None:
        """Transition, save, emit the next messages, record the inbox and history."""
        ...

    def recheck(self, uow: UnitOfWork, message: StepMessage, delay: float) -> None:
        """Queue a new message for the same step and attempt, `delay` seconds later."""
        ...


@dataclass
class _Verified:
    """What one verify pass learned from the ledger."""

    attempts: list[LedgerAttemptRecord]
    answers: dict[str, Committed | Unknown]
    key: KeyAnswer = KeyCheck.NOT_ASKED

    def core_attempts(self) -> list[Attempt]:
        return [Attempt(a.txid, a.state, a.code) for a in self.attempts]

    def settled_without_effect(self) -> bool:
        """True when no transaction of the step is VALID or can ever become VALID.

        Only then may a failure count as final (and let the saga compensate the
        steps before this one): either nothing was ever recorded (every envelope
        is stored before it is submitted), or every attempt committed invalid and
        the chaincode has no record under the key.
        """
        if not self.attempts:
            return True
        answers = self.answers
        codes = [final_code(a, answers) for a in self.core_attempts()]
        return all(c is not None and c != VALID for c in codes) and self.key is KeyCheck.ABSENT


class ChainStepExecutor:
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        ledger: Callable[[], Ledger] | None,
        hooks: ChainStepHooks,
        settings: ChainSettings | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._uow = uow_factory
        self._telemetry = telemetry
        self._ledger_factory = ledger
        self._hooks = hooks
        self.settings = settings or ChainSettings()
        self._clock = clock

    def run(self, message: StepMessage, definition: SagaDefinition, step: Step) -> Outcome:
        """Handle one message for a chain step.

        APPLIED: an event went through the state machine; SUBMITTED: the step stays
        pending on a submitted transaction; WAITING: the ledger cannot be reached
        and the same attempt runs again later; STALE / DUPLICATE as for local steps.
        """
        for _ in range(MAX_ROUNDS):
            outcome = self._round(message, definition, step)
            if outcome is not None:
                return outcome
        raise ConcurrentChainStep(
            f"chain step {step.name!r} of saga {message.saga_id}: its attempts changed under "
            f"us {MAX_ROUNDS} times; the message is retried"
        )

    # -- one round: read, verify, act -------------------------------------------------

    def _round(
        self, message: StepMessage, definition: SagaDefinition, step: Step
    ) -> Outcome | None:
        purpose = message.phase
        with self._uow() as uow:
            # No lock: nothing is written from this read (every write below checks
            # again under the saga's lock), so it does not queue behind the watcher.
            early = self._check(uow, message, lock=False)
            if isinstance(early, Outcome):
                return early
            record = early
            attempts = uow.ledger_attempts.for_step(message.saga_id, step.name, purpose)
        # After the check: a duplicate or stale message is settled without a ledger.
        ledger = self._ledger(definition, step)
        assert step.chain is not None
        call = step.chain
        channel = call.channel or self.settings.channel
        key = chain_key(message.saga_id, step.name, purpose)
        verified = _Verified(attempts, self._statuses(ledger, attempts))
        decision = decide(verified.core_attempts(), verified.answers)
        if isinstance(decision, AskKey):
            try:
                verified.key = self._read_key(ledger, channel, call.chaincode, key)
            except LedgerError as exc:
                # A read that fails says nothing about the step: never a refusal.
                return self._wait(message, definition, verified, exc)
            decision = decide(verified.core_attempts(), verified.answers, verified.key)
        self._telemetry.chain_decided(decision)
        log.info(
            "chain step verified",
            extra={
                "saga_id": message.saga_id,
                "step": step.name,
                "purpose": str(purpose),
                "attempts": len(attempts),
                "decision": type(decision).__name__,
            },
        )
        return self._act(ledger, message, definition, step, record, verified, decision, channel)

    def _act(
        self,
        ledger: Ledger,
        message: StepMessage,
        definition: SagaDefinition,
        step: Step,
        record: SagaRecord,
        verified: _Verified,
        decision: Decision,
        channel: str,
    ) -> Outcome | None:
        match decision:
            case Done(txid=txid, how=how):
                return self._done(message, definition, verified, txid, how)
            case Resubmit(txids=txids):
                return self._resubmit(ledger, message, definition, step, verified, txids)
            case PrepareNew():
                # PrepareNew means every recorded attempt is final and not VALID.
                if len(verified.attempts) >= self.settings.max_invalid_transactions:
                    codes = ", ".join(
                        str(final_code(a, verified.answers)) for a in verified.core_attempts()
                    )
                    return self._fail(
                        message,
                        definition,
                        verified,
                        TransactionsInvalid(
                            f"{len(verified.attempts)} transactions of step {step.name!r} "
                            f"committed invalid (validation codes {codes}); no new one is "
                            "prepared"
                        ),
                    )
                return self._prepare_new(
                    ledger, message, definition, step, record, verified, channel
                )
        raise AssertionError(f"undecided: {decision!r}")

    # -- ledger reads ---------------------------------------------------------------

    def _statuses(
        self, ledger: Ledger, attempts: Sequence[LedgerAttemptRecord]
    ) -> dict[str, Committed | Unknown]:
        answers: dict[str, Committed | Unknown] = {}
        for attempt in attempts:
            if attempt.state is AttemptState.COMMITTED:
                continue
            try:
                result = ledger.commit_status(
                    attempt.channel, attempt.txid, timeout=self.settings.status_timeout
                )
            except StatusUnknown as exc:
                answers[attempt.txid] = Unknown(str(exc))
            except LedgerError as exc:
                # Any other failure to learn the status leaves it unknown, which
                # only ever leads to resubmitting the same envelope.
                answers[attempt.txid] = Unknown(f"{type(exc).__name__}: {exc}")
            else:
                answers[attempt.txid] = Committed(result.code, result.block_number)
        return answers

    def _read_key(self, ledger: Ledger, channel: str, chaincode: str, key: str) -> KeyAnswer:
        payload = ledger.evaluate(
            channel, chaincode, sagafacts.GET_RECORD, [key], timeout=self.settings.evaluate_timeout
        )
        found = sagafacts.parse_record(payload)
        if found is None:
            return KeyCheck.ABSENT
        return KeyPresent(sagafacts.record_txid(found))

    # -- outcomes -------------------------------------------------------------------

    def _done(
        self,
        message: StepMessage,
        definition: SagaDefinition,
        verified: _Verified,
        txid: str,
        how: str,
    ) -> Outcome:
        failpoint("chain.before_done", message.step, message.phase)
        with self._uow() as uow:
            early = self._check(uow, message, verified)
            if isinstance(early, Outcome):
                return early
            ours = uow.ledger_attempts.for_step(message.saga_id, message.step, str(message.phase))
            if txid in {a.txid for a in ours}:
                # The ledger's record names this txid, so it committed VALID.
                uow.ledger_attempts.mark_committed(txid, VALID, None)
            self.settle_valid(uow, early, definition, message, txid)
            uow.commit()
        log.info(
            "chain step done",
            extra={"saga_id": message.saga_id, "step": message.step, "txid": txid, "how": how},
        )
        return Outcome.APPLIED

    def settle_valid(
        self,
        uow: UnitOfWork,
        record: SagaRecord,
        definition: SagaDefinition,
        message: StepMessage,
        txid: str,
    ) -> None:
        """The step took effect in `txid` (committed VALID): it succeeded.

        In the caller's transaction, with the saga locked and awaiting `message`.
        The commit watcher calls this too when it sees a VALID commit of the
        awaited step (`decide` answers Done for any VALID attempt, with no ledger
        call), which spares the step a message and a second executor task.
        """
        event: Event
        output: dict[str, Any] | None = None
        if message.phase is Purpose.DO:
            event = StepSucceeded(message.step, message.attempt)
            output = {"txid": txid, "key": chain_key(message.saga_id, message.step, Purpose.DO)}
        else:
            event = CompensationSucceeded(message.step, message.attempt)
        self._hooks.apply_event(uow, record, definition, message, event, output)

    def _fail(
        self,
        message: StepMessage,
        definition: SagaDefinition,
        verified: _Verified,
        error: Exception,
        *,
        submitted: Sequence[str] = (),
    ) -> Outcome:
        doubt = not verified.settled_without_effect()
        names = error_names(error)
        text = str(error) or type(error).__name__
        event: Event
        if message.phase is Purpose.DO:
            event = StepFailed(message.step, message.attempt, names, text, in_doubt=doubt)
        else:
            # A failed reversal stops the saga for an operator whatever the doubt.
            event = CompensationFailed(message.step, message.attempt, names, text)
        with self._uow() as uow:
            # A resubmission right before giving up is recorded, so the attempt that
            # `saga show` lists says "submitted" as the failure's reason does.
            early = self._check(uow, message, verified, submitted)
            if isinstance(early, Outcome):
                return early
            self._hooks.apply_event(uow, early, definition, message, event, None)
            uow.commit()
        log.warning(
            "chain step failed",
            extra={
                "saga_id": message.saga_id,
                "step": message.step,
                "error": f"{type(error).__name__}: {text}",
                "in_doubt": doubt,
            },
        )
        return Outcome.APPLIED

    def _wait(
        self,
        message: StepMessage,
        definition: SagaDefinition,
        verified: _Verified,
        error: LedgerError,
    ) -> Outcome:
        """The ledger cannot take the step now: look again later, or hand it to an operator.

        The outage is timed from the first time this step found the ledger away
        (kept in the step's state), so redelivered and re-checked messages share
        one budget. A misconfiguration is not waited out: no delay repairs it.
        """
        fault = error.fault
        now = self._clock()
        with self._uow() as uow:
            early = self._check(uow, message, verified)
            if isinstance(early, Outcome):
                return early
            step_state = early.state.steps[early.state.current]
            since = step_state.waiting_since or now
            waited = max((now - since).total_seconds(), 0.0)
            retry_in = (
                None
                if fault.kind is FaultKind.MISCONFIGURED
                else self.settings.outage.retry_in(waited)
            )
            text = f"ledger {fault.kind}: {_where(error, definition, message)} ({error})"
            event = LedgerWait(
                message.step,
                message.attempt,
                message.phase is Purpose.UNDO,
                text,
                since,
                retry_in,
            )
            self._hooks.apply_event(uow, early, definition, message, event, None)
            uow.commit()
        self._telemetry.ledger_waited(str(fault.kind), retry_in is None)
        fields = {
            "saga_id": message.saga_id,
            "step": message.step,
            "phase": str(message.phase),
            "fault": str(fault.kind),
            "waited_s": round(waited, 1),
            "error": str(error),
        }
        # One line per change of state, not one per look.
        if retry_in is None:
            log.error("chain step handed to an operator: the ledger cannot take it", extra=fields)
        elif step_state.waiting_since is None:
            log.warning("chain step waits for the ledger", extra=fields)
        else:
            log.debug("chain step still waits for the ledger", extra=fields)
        return Outcome.WAITING

    def _resubmit(
        self,
        ledger: Ledger,
        message: StepMessage,
        definition: SagaDefinition,
        step: Step,
        verified: _Verified,
        txids: tuple[str, ...],
    ) -> Outcome:
        by_txid = {a.txid: a for a in verified.attempts}
        submitted: list[str] = []
        failure: LedgerError | None = None
        for txid in txids:
            attempt = by_txid[txid]
            try:
                # The stored bytes, unchanged: the same txid, so at most one of its
                # copies can ever commit.
                ledger.submit(attempt.envelope, timeout=self.settings.submit_timeout)
            except LedgerError as exc:
                failure = exc
            else:
                submitted.append(txid)
        self._telemetry.chain_transactions("resubmitted", len(submitted))
        oldest = min(
            (a.created_at for a in verified.attempts if a.txid in txids and a.created_at),
            default=None,
        )
        if failure is not None and not submitted and failure.fault.kind is FaultKind.UNAVAILABLE:
            # Nothing went out: the step's transactions are as much in doubt as before,
            # and an outage of the orderer or the gateway is waited out, not judged.
            return self._wait(message, definition, verified, failure)
        now = self._clock()
        overdue = oldest is not None and now - oldest > timedelta(seconds=step.timeout)
        if overdue:
            why = _outcome_unknown(step.timeout, [by_txid[t] for t in txids], submitted, now)
            if failure is not None:
                why += f"; the ledger answered: {failure}"
            return self._fail(
                message, definition, verified, LedgerOutcomeUnknown(why), submitted=submitted
            )
        return self._pending(message, definition, verified, submitted)

    def _prepare_new(
        self,
        ledger: Ledger,
        message: StepMessage,
        definition: SagaDefinition,
        step: Step,
        record: SagaRecord,
        verified: _Verified,
        channel: str,
    ) -> Outcome | None:
        assert step.chain is not None
        call: ChainCall = step.chain
        purpose = message.phase
        ctx = StepContext(
            saga_id=message.saga_id,
            saga_name=record.state.name,
            step=step.name,
            attempt=message.attempt,
            input=definition.input_model.model_validate(record.input),
            data=dict(record.data),
            session=None,
        )
        try:
            function = call.function_for(purpose)
            args = call.arguments(ctx, purpose)
        except Exception as exc:
            return self._fail(message, definition, verified, exc)
        try:
            prepared = ledger.prepare(
                channel, call.chaincode, function, args, timeout=self.settings.endorse_timeout
            )
        except EndorseFailed as exc:
            return self._endorse_refused(message, definition, verified, exc)
        except LedgerError as exc:
            return self._wait(message, definition, verified, exc)

        with self._uow() as uow:
            early = self._check(uow, message, verified)
            if isinstance(early, Outcome):
                # Never stored, so never submitted: this envelope can never commit.
                return early
            now = uow.ledger_attempts.for_step(message.saga_id, step.name, purpose)
            if [a.txid for a in now] != [a.txid for a in verified.attempts]:
                log.info(
                    "chain step attempts changed meanwhile; starting over",
                    extra={"saga_id": message.saga_id, "step": step.name},
                )
                return None
            uow.ledger_attempts.add(
                LedgerAttemptRecord(
                    saga_id=message.saga_id,
                    step=step.name,
                    purpose=str(purpose),
                    txid=prepared.txid,
                    channel=prepared.channel,
                    envelope=prepared.envelope,
                    state=AttemptState.PREPARED,
                    worker=self.settings.worker,
                )
            )
            # The usual case, a step that was not waiting out an outage, needs no
            # transaction after the submit: its re-check goes out with the envelope
            # (it verifies the step again whatever the submit did) and the message is
            # not put in the inbox, as a redelivery only verifies and resubmits the
            # same bytes. A step back from an outage records that it is, after.
            quick = early.state.steps[early.state.current].waiting_since is None
            if quick and self.settings.recheck_delay > 0:
                self._hooks.recheck(uow, message, self.settings.recheck_delay)
            failpoint("chain.before_prepared_commit", message.step, message.phase)
            uow.commit()
        failpoint("chain.after_prepared", message.step, message.phase)
        self._telemetry.chain_transactions("prepared")
        return self._submit_new(ledger, message, definition, verified, prepared, quick=quick)

    def _submit_new(
        self,
        ledger: Ledger,
        message: StepMessage,
        definition: SagaDefinition,
        verified: _Verified,
        prepared: PreparedTx,
        *,
        quick: bool,
    ) -> Outcome:
        """`quick`: the re-check is already queued with the PREPARED row (see _prepare_new)."""
        try:
            ledger.submit(prepared, timeout=self.settings.submit_timeout)
        except LedgerError as exc:
            # Ordered or not, nobody knows: the row stays PREPARED and the next
            # verify pass asks the ledger, then resubmits these same bytes.
            log.warning(
                "submit outcome unknown",
                extra={"saga_id": message.saga_id, "txid": prepared.txid, "error": str(exc)},
            )
            if exc.fault.kind is FaultKind.UNAVAILABLE:
                # An orderer or gateway away: look again within seconds, under the
                # outage budget, rather than at the re-check delay.
                return self._wait(message, definition, verified, exc)
            if quick:
                return Outcome.SUBMITTED
            return self._pending(message, definition, verified, [])
        failpoint("chain.after_submit", message.step, message.phase)
        if quick:
            # No saga lock: one row's PREPARED -> SUBMITTED, which only says when
            # the orderer took it (a commit already recorded stays recorded).
            with self._uow() as uow:
                uow.ledger_attempts.mark_submitted(prepared.txid)
                uow.commit()
            return Outcome.SUBMITTED
        return self._pending(message, definition, verified, [prepared.txid])

    def _pending(
        self,
        message: StepMessage,
        definition: SagaDefinition,
        verified: _Verified,
        submitted: list[str],
    ) -> Outcome:
        with self._uow() as uow:
            early = self._check(uow, message, verified, submitted)
            if isinstance(early, Outcome):
                return early
            waited_since = early.state.steps[early.state.current].waiting_since
            if submitted and waited_since is not None:
                # The ledger took a transaction: the outage this step waited out is over.
                back = LedgerReached(message.step, message.attempt, message.phase is Purpose.UNDO)
                self._hooks.apply_event(uow, early, definition, message, back, None)
                log.info(
                    "chain step reached the ledger again",
                    extra={
                        "saga_id": message.saga_id,
                        "step": message.step,
                        "waited_s": round((self._clock() - waited_since).total_seconds(), 1),
                    },
                )
            else:
                uow.inbox.record(message.message_id, message.saga_id)
            if self.settings.recheck_delay > 0:
                self._hooks.recheck(uow, message, self.settings.recheck_delay)
            uow.commit()
        return Outcome.SUBMITTED

    def _endorse_refused(
        self,
        message: StepMessage,
        definition: SagaDefinition,
        verified: _Verified,
        exc: EndorseFailed,
    ) -> Outcome:
        refusal = sagafacts.parse_refusal(str(exc))
        if refusal is not None and refusal.code == sagafacts.ALREADY_RECORDED:
            found = refusal.record()
            if found is not None and found.get("key") in (
                None,
                chain_key(message.saga_id, message.step, str(message.phase)),
            ):
                txid = sagafacts.record_txid(found)
                return self._done(message, definition, verified, txid, "ALREADY_RECORDED")
        if refusal is not None and refusal.code in sagafacts.BUSINESS_CODES:
            return self._fail(
                message, definition, verified, ChaincodeRefused(refusal.code, refusal.detail)
            )
        kind = exc.fault.kind
        if kind is FaultKind.UNAVAILABLE or kind is FaultKind.MISCONFIGURED:
            return self._wait(message, definition, verified, exc)
        if refusal is not None:
            # The chaincode's own INTERNAL: a fault of the moment, for the step's retries.
            return self._fail(message, definition, verified, EndorsementFailed(str(exc)))
        if kind is FaultKind.REFUSED:
            return self._fail(message, definition, verified, ChaincodeRefused("REFUSED", str(exc)))
        return self._fail(message, definition, verified, EndorsementFailed(str(exc)))

    # -- helpers --------------------------------------------------------------------

    def _check(
        self,
        uow: UnitOfWork,
        message: StepMessage,
        verified: _Verified | None = None,
        submitted: Sequence[str] = (),
        *,
        lock: bool = True,
    ) -> SagaRecord | Outcome:
        """Lock the saga and check it still awaits the message; else finish it here.

        Anything the verify pass learned is recorded either way: a commit code is
        a fact about the ledger, whoever the saga is waiting for now. `lock=False`
        only for a read that decides what to ask the ledger, never for a write.
        """
        if uow.inbox.seen(message.message_id):
            return Outcome.DUPLICATE
        record = uow.sagas.get(message.saga_id, for_update=lock)
        if record is None:
            raise MalformedMessage(f"no saga with id {message.saga_id!r}")
        message.check_saga(record.state)
        if verified is not None:
            for txid, answer in verified.answers.items():
                if isinstance(answer, Committed):
                    uow.ledger_attempts.mark_committed(txid, answer.code, answer.block)
        for txid in submitted:
            uow.ledger_attempts.mark_submitted(txid)
        why = why_not_awaited(record.state, message.command())
        if why is not None:
            uow.inbox.record(message.message_id, message.saga_id)
            uow.commit()
            log.info(
                "stale chain step message ignored",
                extra={"saga_id": message.saga_id, "step": message.step, "why": why},
            )
            return Outcome.STALE
        return record

    def _ledger(self, definition: SagaDefinition, step: Step) -> Ledger:
        if self._ledger_factory is None:
            raise LedgerNotConfigured(definition.name, step.name)
        return self._ledger_factory()


def _where(error: LedgerError, definition: SagaDefinition, message: StepMessage) -> str:
    """The part of the network the error shows to be down, else what the fault means.

    A step's last error is what an operator reads first: "chaincode sagafacts is not
    running" says what to start, where "a peer or the chaincode is unreachable" does not.
    """
    call = definition.step(message.step).chain
    # A Fabric GatewayError carries the gRPC code and each peer's words; the port's
    # LedgerError only its text.
    code = getattr(getattr(error, "code", None), "name", None)
    down = part_down(
        code,
        getattr(error, "status_message", "") or str(error),
        getattr(error, "details", ()),
        chaincode=call.chaincode if call is not None else None,
    )
    return error.fault.meaning if down is None else down.says


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _outcome_unknown(
    timeout: float,
    attempts: Sequence[LedgerAttemptRecord],
    resubmitted: Sequence[str],
    now: datetime,
) -> str:
    """Why the step gives up, in the words of its attempt records (as `saga show` lists them).

    The step's timeout runs from when a transaction was prepared; whether it was
    ever handed to the orderer is what the record says, not what the timeout assumes.
    """
    told = []
    for a in attempts:
        prepared = f"prepared {_at(a.created_at)}" if a.created_at else "prepared"
        if a.submitted_at is not None:
            sent = f"submitted {_at(a.submitted_at)}"
        elif a.txid in resubmitted:
            sent = f"submitted {_at(now)}"
        else:
            sent = "no submit recorded: its answer was lost or it never went out"
        told.append(f"{a.txid} ({prepared}, {sent})")
    what = "it was" if len(attempts) == 1 else "they were"
    return (
        f"outcome of transaction {', '.join(told)} still unknown more than {timeout:g}s after "
        f"{what} prepared"
    )
