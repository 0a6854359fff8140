"""Running the step a message asks for, exactly once, and the local steps that follow inline."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saga.app.chain.executor import ChainStepExecutor
from saga.app.outcome import Outcome as Outcome
from saga.app.transitions import Advance, SagaWriter, runs_inline
from saga.core import step_report
from saga.core.definitions import Registry, SagaDefinition, Step, StepContext, StepKind
from saga.core.errors import OrchestrationError
from saga.core.machine import why_not_awaited
from saga.core.messages import (
    CompensationFailed,
    CompensationSucceeded,
    Event,
    StepFailed,
    StepSucceeded,
)
from saga.core.purpose import Purpose
from saga.core.retry import error_names
from saga.core.step_message import MalformedMessage, StepMessage
from saga.ports.store import SagaRecord, UnitOfWork, UnitOfWorkFactory
from saga.ports.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger("saga.orchestrator")


class StepRunner:
    """Handles step messages: local steps in one transaction each, chain steps by the executor."""

    def __init__(
        self,
        registry: Registry,
        uow_factory: UnitOfWorkFactory,
        writer: SagaWriter,
        chain: ChainStepExecutor,
        transient: tuple[type[BaseException], ...],
        *,
        fuse: bool = True,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        """`fuse`: run consecutive local steps inline in one transaction (see handle)."""
        self.registry = registry
        self.fuse = fuse
        self._telemetry = telemetry
        self._uow = uow_factory
        self._writer = writer
        self.chain = chain
        # Errors that say the database is gone, not that the step failed (the store
        # adapter's driver errors). They must not count as a step failure: the
        # transaction is lost anyway and the message is delivered again later.
        self._transient = transient

    def handle(self, message: StepMessage, *, inline: int = 0) -> Outcome:
        """Run the step or compensation the message asks for, exactly once.

        The action's business writes, the saga's new state, the inbox record and
        the next messages commit in one transaction. Raises MalformedMessage or
        UnknownSaga for messages that can never succeed (dead-letter them) and
        StoreUnavailable for transient trouble (retry them).

        With `inline` > 0, up to that many following local steps of the saga run
        here too, without the trip through relay, broker and another task.

        Fused (the default): consecutive local steps run in the transaction of
        the first, and the saga's state, history and next messages are written
        once, at the end of the run. Their messages are never written: nothing
        outside the transaction can deliver them, and the delivered message's
        inbox record stands for the whole run. If a step of the run raises, the
        transaction is rolled back and the run is done again one step per
        transaction (below), so the failure is recorded against its own step:
        the steps before it run again (the first run's writes were rolled
        back), the failing step is not run again, its failure is recorded in a
        transaction of its own. A step declared `external` (effects outside its
        session) is never fused.

        One step per transaction (`fuse=False`, an external step, after a
        failed fused run): each step's message is written to the outbox in the
        transaction before it, held back for `inline_reserve` seconds, and the
        step's transaction marks it published. If this process dies, or the
        inline step fails to commit, the relay publishes the held message when
        the reserve passes and the step runs through the queue as usual.

        The outcome returned is the delivered message's; trouble in an inline
        step is logged, never raised (its message is safe in the outbox).
        """
        run = _Run(fuse=self.fuse, budget=inline)
        outcome, following = self._handle_one(message, run, taken=False)
        while run.budget > 0 and following is not None:
            held = following
            run.budget -= 1
            try:
                inline_outcome, following = self._handle_one(held, run, taken=True)
                if inline_outcome is not Outcome.DUPLICATE:
                    # Committed with its take: this message is never published.
                    self._telemetry.inline_step(held.saga, held.step, held.phase)
                log.info(
                    "inline step handled",
                    extra={
                        "saga_id": held.saga_id,
                        "step": held.step,
                        "phase": str(held.phase),
                        "attempt": held.attempt,
                        "message_id": held.message_id,
                        "outcome": str(inline_outcome),
                    },
                )
            except Exception as exc:
                log.warning(
                    "inline step not run; its message is published after the reserve",
                    # A bug deserves its traceback; a database outage does not.
                    exc_info=not isinstance(exc, self._transient),
                    extra={
                        "saga_id": held.saga_id,
                        "step": held.step,
                        "message_id": held.message_id,
                        "reserve_seconds": self._writer.inline_reserve,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )
                return outcome
        if following is not None:
            # The inline budget ran out: send the held message now, not after the reserve.
            try:
                with self._uow() as uow:
                    uow.outbox.release(following.message_id)
                    uow.commit()
            except Exception as exc:
                log.warning(
                    "held message not released; it is published after the reserve",
                    extra={
                        "saga_id": following.saga_id,
                        "message_id": following.message_id,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )
        return outcome

    def handle_reporting(
        self, message: StepMessage, *, inline: int = 0
    ) -> tuple[Outcome, list[step_report.Setback]]:
        """handle(), and the failures and ledger waits it applied (inline steps included)."""
        with step_report.collect() as setbacks:
            outcome = self.handle(message, inline=inline)
        return outcome, setbacks

    def _handle_one(
        self, message: StepMessage, run: _Run, *, taken: bool
    ) -> tuple[Outcome, StepMessage | None]:
        """handle() for one message and, fused, the local steps after it within the budget.

        Returns the outcome and, with inline budget left, the next local step's
        message if it was written held back for this process to run inline.
        """
        hold = run.budget > 0
        chain_step = self._peek(message)
        if chain_step is not None and chain_step.kind is StepKind.CHAIN:
            # Straight to the executor, outside any transaction: a chain step's
            # ledger calls must not hold the saga's row lock, and the executor
            # checks the message against the saga in each of its transactions.
            definition = self.registry.get(message.saga, message.version)
            with self._telemetry.step_running("chain", message.phase):
                return self.chain.run(message, definition, chain_step), None
        failed = run.failed
        if failed is not None and failed.of(message):
            # Done again step by step, the run reached the step that failed in it:
            # its failure is recorded as it happened, without running it again.
            # The run ends there; what follows (a compensation) may fuse again.
            run.failed, run.fuse = None, self.fuse
            return self._record_failure(message, failed.error, hold=hold, taken=taken)
        if run.fuse and hold and chain_step is not None and chain_step.fusable:
            fused = self._run_fused(message, run, taken=taken)
            if not isinstance(fused, _Failed):
                return fused
            run.fuse, run.failed = False, fused
        return self._run_one(message, hold, taken=taken)

    def _run_one(
        self, message: StepMessage, hold: bool, *, taken: bool
    ) -> tuple[Outcome, StepMessage | None]:
        """One local step in its own transaction; with `hold`, the next local step's
        message if it was written held back for this process to run inline."""
        with self._uow() as uow:
            loaded = self._load(uow, message, taken=taken)
            if isinstance(loaded, Outcome):
                return loaded, None
            record, definition, _ = loaded
            with self._telemetry.step_running("local", message.phase):
                try:
                    output = self._run_action(uow, message, record, definition)
                except Exception as exc:
                    if isinstance(exc, self._transient):
                        raise
                    failure = exc
                else:
                    following = self._writer.apply(
                        uow, record, definition, message, _success(message), output, hold=hold
                    )
                    uow.commit()
                    return Outcome.APPLIED, following
        return self._record_failure(message, failure, hold=hold, taken=taken)

    def _run_fused(
        self, message: StepMessage, run: _Run, *, taken: bool
    ) -> tuple[Outcome, StepMessage | None] | _Failed:
        """The message's step and the fusable local steps after it (within the inline
        budget, which it spends) in one transaction; _Failed if a step after the
        first raised (nothing of the run is kept).

        The steps after the first get messages made here, never written: the
        machine's own next command, checked like a delivered one.
        """
        with self._uow() as uow:
            loaded = self._load(uow, message, taken=taken)
            if isinstance(loaded, Outcome):
                return loaded, None
            record, definition, _ = loaded
            advance = Advance(record)
            current, fused = message, list[StepMessage]()
            while True:
                with self._telemetry.step_running("local", current.phase):
                    try:
                        output = self._run_action(uow, current, advance.record, definition)
                    except Exception as exc:
                        if isinstance(exc, self._transient):
                            raise
                        if fused:
                            log.info(
                                "fused run rolled back; running it again step by step",
                                extra={
                                    "saga_id": message.saga_id,
                                    "step": current.step,
                                    "fused": len(fused),
                                    "error": f"{type(exc).__name__}: {exc}",
                                },
                            )
                            # The steps before the failing one run again; the
                            # failing one is not (its failure is recorded).
                            self._telemetry.fused_run_rolled_back(
                                current.saga, current.step, current.phase, len(fused)
                            )
                            return _Failed(current, exc)
                        failure = exc
                        break
                self._writer.advance(advance, definition, current, _success(current), output)
                more = len(fused) < run.budget
                after = self._next_fused(advance, definition) if more else None
                if after is None:
                    following = self._writer.write(uow, advance, definition, hold=more)
                    uow.commit()
                    run.budget -= len(fused)
                    for done in fused:
                        self._telemetry.fused_step(done.saga, done.step, done.phase)
                    return Outcome.APPLIED, following
                current = after
                fused.append(after)
        return self._record_failure(message, failure, hold=True, taken=taken)

    def _next_fused(self, run: Advance, definition: SagaDefinition) -> StepMessage | None:
        """The message for the saga's next step if it may run fused after this one."""
        state = run.record.state
        if not runs_inline(definition, run.commands):
            return None
        command = run.commands[0]
        if not definition.step(command.step).fusable:
            return None
        following = self._writer.message(state, command)
        if why_not_awaited(state, following.command()) is not None:
            return None
        return following

    def _load(
        self, uow: UnitOfWork, message: StepMessage, *, taken: bool = False
    ) -> Outcome | tuple[SagaRecord, SagaDefinition, Step]:
        """Claim a local step's message and lock its saga; an Outcome if there is
        nothing to run.

        The claim in the inbox commits with the step, or rolls back with it.
        `taken`: the message is one this process held back to run inline; it is
        marked published in the same transaction, so the relay never sends it.
        """
        claim = uow.claim_step(message.message_id, message.saga_id, take=taken)
        if not claim.fresh:
            return Outcome.DUPLICATE
        record = claim.record
        if record is None:
            # Also what a database failover with asynchronous replication leaves:
            # the saga's acceptance committed on the old primary, its message
            # relayed, the row never reached the promoted standby. The message is
            # dead-lettered with this reason for an operator (README, "PostgreSQL
            # failover"), never retried: no later delivery can find the saga.
            raise MalformedMessage(
                f"no saga with id {message.saga_id!r} in the database (saga "
                f"{message.saga!r}, step {message.step!r}): if the database failed over "
                "with asynchronous replication, its acceptance was lost with the "
                "transactions the standby had not received; ask the caller to submit "
                "it again (README, PostgreSQL failover)"
            )
        state = record.state
        message.check_saga(state)
        definition = self.registry.get(state.name, state.version)
        try:
            step = definition.step(message.step)
        except KeyError:
            raise MalformedMessage(
                f"saga {state.name!r} v{state.version} has no step {message.step!r}"
            ) from None
        why = why_not_awaited(state, message.command())
        if why is not None:
            uow.commit()
            log.info(
                "stale step message ignored",
                extra={"saga_id": state.saga_id, "step": message.step, "why": why},
            )
            return Outcome.STALE
        return record, definition, step

    def _peek(self, message: StepMessage) -> Step | None:
        """The step a message names, from the registry alone (None: unknown, checked later)."""
        try:
            return self.registry.get(message.saga, message.version).step(message.step)
        except (OrchestrationError, KeyError):
            return None

    def _run_action(
        self, uow: UnitOfWork, message: StepMessage, record: SagaRecord, definition: SagaDefinition
    ) -> Mapping[str, Any] | None:
        """Run the step's action (or compensation) in the transaction; its output, if any.

        No savepoint around it: if it raises, the caller ends the whole transaction
        and records the failure in a new one, which costs round trips only when a
        step fails rather than on every step.
        """
        state = record.state
        step = definition.step(message.step)
        fn = step.action if message.phase is Purpose.DO else step.compensation
        assert fn is not None  # the definition guarantees it for awaited commands
        # The unit of work sends the step's pending writes as the block ends, so
        # their errors are the step's.
        with uow.step_session() as session:
            ctx = StepContext(
                saga_id=state.saga_id,
                saga_name=state.name,
                step=step.name,
                attempt=message.attempt,
                input=definition.input_model.model_validate(record.input),
                data=dict(record.data),
                session=session,
            )
            result = fn(ctx)
        return _step_output(step.name, result) if message.phase is Purpose.DO else None

    def _record_failure(
        self, message: StepMessage, exc: Exception, *, hold: bool, taken: bool
    ) -> tuple[Outcome, StepMessage | None]:
        """The step raised and its transaction is gone; record the failure in a new one.

        The saga is locked and checked again: another delivery of the message may
        have been handled in between (then this one is a duplicate or stale).
        """
        with self._uow() as uow:
            loaded = self._load(uow, message, taken=taken)
            if isinstance(loaded, Outcome):
                return loaded, None
            record, definition, _ = loaded
            event = self._failure_event(message, exc)
            following = self._writer.apply(uow, record, definition, message, event, None, hold=hold)
            uow.commit()
            return Outcome.APPLIED, following

    @staticmethod
    def _failure_event(message: StepMessage, exc: Exception) -> Event:
        names = error_names(exc)
        text = str(exc) or type(exc).__name__
        if message.phase is Purpose.DO:
            return StepFailed(message.step, message.attempt, names, text)
        return CompensationFailed(message.step, message.attempt, names, text)


@dataclass
class _Failed:
    """A step that raised in a fused run: the message it ran for and its error."""

    message: StepMessage
    error: Exception

    def of(self, message: StepMessage) -> bool:
        """`message` asks for the same step, phase and attempt of the same saga."""
        m = self.message
        return (m.saga_id, m.step, m.phase, m.attempt) == (
            message.saga_id,
            message.step,
            message.phase,
            message.attempt,
        )


@dataclass
class _Run:
    """One handle() call: inline steps left, whether to fuse, a failure to record."""

    fuse: bool
    budget: int
    failed: _Failed | None = None


def _success(message: StepMessage) -> Event:
    if message.phase is Purpose.DO:
        return StepSucceeded(message.step, message.attempt)
    return CompensationSucceeded(message.step, message.attempt)


def _step_output(step: str, output: object) -> dict[str, Any] | None:
    """What a step returned, as the JSON object kept in the saga's data.

    Raised inside the step's handling, so a bad return value is a failure of the
    step (its writes rolled back, its retry policy applied), not an error that
    escapes handle() and leaves the saga waiting on a dead-lettered message.
    """
    if output is None:
        return None
    if not isinstance(output, Mapping):
        raise TypeError(
            f"step {step!r} returned {type(output).__name__}; a step returns a mapping or None"
        )
    data = dict(output)
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"step {step!r} returned data that is not JSON: {exc}") from None
    return data
