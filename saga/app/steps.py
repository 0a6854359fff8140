"""Running the step a message asks for, exactly once, and the local steps that follow inline."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from saga.app.chain.executor import ChainStepExecutor
from saga.app.outcome import Outcome as Outcome
from saga.app.transitions import SagaWriter
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
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self.registry = registry
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
        here too, each in its own transaction exactly as if its message had been
        delivered, without the trip through relay, broker and another task. The
        message for each is still written to the outbox in the transaction before
        it, only held back for `inline_reserve` seconds; the step's transaction
        marks it published. If this process dies, or the inline step fails to
        commit, the relay publishes the held message when the reserve passes and
        the step runs through the queue as usual. The outcome returned is the
        delivered message's; trouble in an inline step is logged, never raised
        (its message is safe in the outbox).
        """
        outcome, following = self._handle_one(message, inline > 0, taken=False)
        for _ in range(inline):
            if following is None:
                break
            held = following
            try:
                inline_outcome, following = self._handle_one(held, True, taken=True)
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
        self, message: StepMessage, hold: bool, *, taken: bool
    ) -> tuple[Outcome, StepMessage | None]:
        """handle() for one message; with `hold`, also the next local step's message
        if it was written held back for this process to run inline."""
        chain_step = self._peek(message)
        if chain_step is not None and chain_step.kind is StepKind.CHAIN:
            # Straight to the executor, outside any transaction: a chain step's
            # ledger calls must not hold the saga's row lock, and the executor
            # checks the message against the saga in each of its transactions.
            definition = self.registry.get(message.saga, message.version)
            with self._telemetry.step_running("chain", message.phase):
                return self.chain.run(message, definition, chain_step), None
        with self._uow() as uow:
            loaded = self._load(uow, message, taken=taken)
            if isinstance(loaded, Outcome):
                return loaded, None
            record, definition, step = loaded
            with self._telemetry.step_running("local", message.phase):
                try:
                    output = self._run_action(uow, message, record, definition)
                except Exception as exc:
                    if isinstance(exc, self._transient):
                        raise
                    failure = exc
                else:
                    event: Event = (
                        StepSucceeded(step.name, message.attempt)
                        if message.phase is Purpose.DO
                        else CompensationSucceeded(step.name, message.attempt)
                    )
                    following = self._writer.apply(
                        uow, record, definition, message, event, output, hold=hold
                    )
                    uow.commit()
                    return Outcome.APPLIED, following
        return self._record_failure(message, failure, hold=hold, taken=taken)

    def _load(
        self, uow: UnitOfWork, message: StepMessage, *, taken: bool = False
    ) -> Outcome | tuple[SagaRecord, SagaDefinition, Step]:
        """Claim a local step's message and lock its saga; an Outcome if there is
        nothing to run.

        The claim in the inbox commits with the step, or rolls back with it.
        `taken`: the message is one this process held back to run inline; it is
        marked published in the same transaction, so the relay never sends it.
        """
        if not uow.inbox.claim(message.message_id, message.saga_id):
            return Outcome.DUPLICATE
        if taken:
            uow.outbox.take(message.message_id)
        record = uow.sagas.get(message.saga_id, for_update=True)
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
