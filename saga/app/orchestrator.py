"""The application service: starts sagas and runs the step a message asks for.

It speaks only to ports (unit of work, registry) and the pure core; Celery tasks
and the HTTP API call it, and tests drive it with in-memory fakes or real stores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from saga.adapters.prometheus import metrics
from saga.app.chain.executor import ChainSettings, ChainStepExecutor
from saga.core import step_report
from saga.core.chain import VALID, AttemptState
from saga.core.definitions import (
    Purpose,
    Registry,
    SagaDefinition,
    Step,
    StepContext,
    StepKind,
)
from saga.core.errors import SagaError
from saga.core.machine import awaits, transition
from saga.core.messages import (
    Command,
    CompensateRequested,
    CompensationFailed,
    CompensationSucceeded,
    Event,
    LedgerReached,
    LedgerWait,
    MarkedStuck,
    ResumeRequested,
    Started,
    StepFailed,
    StepSucceeded,
)
from saga.core.retry import error_names
from saga.core.state import SagaState, SagaStatus, StepStatus
from saga.core.step_message import MalformedMessage, Phase, StepMessage
from saga.ports.ledger import Ledger
from saga.ports.store import (
    DuplicateIdempotencyKey,
    HistoryEntry,
    OutboxMessage,
    SagaRecord,
    StoreUnavailable,
    UnitOfWork,
    UnitOfWorkFactory,
)

log = logging.getLogger("saga.orchestrator")

MAX_IDEMPOTENCY_KEY = 200


class InvalidInput(SagaError):
    """The payload does not fit the saga's input schema."""

    def __init__(self, saga: str, errors: list[dict[str, Any]]) -> None:
        self.saga = saga
        self.errors = errors
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '(payload)'}: {e.get('msg')}"
            for e in errors
        )
        super().__init__(f"payload for saga {saga!r} is invalid: {fields}")


class IdempotencyConflict(SagaError):
    """The idempotency key is already used by a saga with a different payload."""

    def __init__(self, key: str, saga_id: str) -> None:
        self.key = key
        self.saga_id = saga_id
        super().__init__(
            f"idempotency key {key!r} already started saga {saga_id} with a different "
            "payload; use a new key for a new request"
        )


class InvalidIdempotencyKey(SagaError):
    pass


class SagaNotFound(SagaError):
    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"no saga with id {saga_id!r}")


class OperatorActionRefused(SagaError):
    pass


class Outcome(StrEnum):
    APPLIED = "applied"  # the step (or compensation) ran and its result was recorded
    DUPLICATE = "duplicate"  # the inbox had this message already
    STALE = "stale"  # the saga no longer waits for this step/attempt
    # A chain step's transaction was (re)submitted; the step stays pending until a
    # later message (commit watcher, re-check, retry) finds its outcome.
    SUBMITTED = "submitted"
    # A chain step found the ledger unreachable; the same attempt runs again later.
    WAITING = "waiting"


@dataclass(frozen=True)
class Enqueued:
    saga_id: str
    created: bool


def payload_hash(saga: str, payload: Mapping[str, Any]) -> str:
    canonical = json.dumps({"saga": saga, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class Orchestrator:
    def __init__(
        self,
        registry: Registry,
        uow_factory: UnitOfWorkFactory,
        *,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        transient_errors: tuple[type[BaseException], ...] = (),
        ledger: Callable[[], Ledger] | None = None,
        chain_settings: ChainSettings | None = None,
        inline_reserve: float = 30.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """`ledger` is called when a chain step first needs it (the composition root
        connects lazily, after a worker forks); None: chain steps are refused with
        the settings to set. `inline_reserve`: see `handle(inline=...)`. `clock`
        times chain steps (their timeouts and ledger outages)."""
        self.registry = registry
        self._uow = uow_factory
        self._new_id = new_id
        # Errors that say the database is gone, not that the step failed (the store
        # adapter's driver errors). They must not count as a step failure: the
        # transaction is lost anyway and the message is delivered again later.
        self._transient: tuple[type[BaseException], ...] = (StoreUnavailable, *transient_errors)
        self.inline_reserve = inline_reserve
        self.chain = ChainStepExecutor(uow_factory, ledger, self, chain_settings, clock=clock)

    @property
    def uow_factory(self) -> UnitOfWorkFactory:
        return self._uow

    # -- starting ---------------------------------------------------------------

    def validate(self, saga: str, payload: object) -> tuple[SagaDefinition, BaseModel]:
        definition = self.registry.get(saga)
        try:
            document = json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                saga, [{"loc": (), "msg": f"not a JSON document ({exc})", "type": "json_invalid"}]
            ) from None
        try:
            # Strict JSON mode: a caller's value must be the JSON type the schema
            # names (`true` is not one cent, "12" is not twelve), while the types
            # JSON spells as strings (dates, UUIDs) still parse from strings.
            model = definition.input_model.model_validate_json(
                document, strict=not definition.lax_input
            )
        except ValidationError as exc:
            raise InvalidInput(saga, [dict(e) for e in exc.errors(include_url=False)]) from None
        return definition, model

    def enqueue(
        self, saga: str, payload: object, *, idempotency_key: str | None = None
    ) -> Enqueued:
        """Start a saga; with a key, a repeated request returns the first saga's id."""
        if idempotency_key is not None and not (
            0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
        ):
            raise InvalidIdempotencyKey(
                f"idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"
            )
        definition, model = self.validate(saga, payload)
        data = model.model_dump(mode="json")
        digest = payload_hash(definition.name, data)
        if idempotency_key is not None:
            existing = self._find_by_key(idempotency_key, digest)
            if existing:
                return Enqueued(existing, created=False)
        saga_id = self._new_id()
        state = SagaState.new(
            saga_id, definition.name, definition.version, [s.name for s in definition.steps]
        )
        t = transition(definition, state, Started())
        record = SagaRecord(
            state=t.state,
            input=data,
            idempotency_key=idempotency_key,
            payload_hash=digest,
            created_at=_now(),
            updated_at=_now(),
        )
        try:
            with self._uow() as uow:
                uow.sagas.add(record)
                self._emit(uow, record.state, t.commands)
                self._note(uow, saga_id, "started", {"saga": saga, "version": definition.version})
                uow.commit()
        except DuplicateIdempotencyKey:
            # Another API instance won the race for this key; answer as it would.
            assert idempotency_key is not None
            existing = self._find_by_key(idempotency_key, digest)
            if existing is None:
                raise
            return Enqueued(existing, created=False)
        log.info("saga started", extra={"saga_id": saga_id, "saga": saga})
        metrics.enqueued(definition.name)
        return Enqueued(saga_id, created=True)

    def _find_by_key(self, key: str, digest: str) -> str | None:
        with self._uow() as uow:
            found = uow.sagas.by_idempotency_key(key)
        if found is None:
            return None
        if found.payload_hash != digest:
            raise IdempotencyConflict(key, found.saga_id)
        return found.saga_id

    # -- running steps ----------------------------------------------------------

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
                    metrics.inline_step(held.saga, held.step, held.phase)
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
                        "reserve_seconds": self.inline_reserve,
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
            with metrics.step_timer("chain", message.phase):
                return Outcome(self.chain.run(message, definition, chain_step)), None
        with self._uow() as uow:
            loaded = self._load(uow, message, taken=taken)
            if isinstance(loaded, Outcome):
                return loaded, None
            record, definition, step = loaded
            with metrics.step_timer("local", message.phase):
                try:
                    output = self._run_action(uow, message, record, definition)
                except Exception as exc:
                    if isinstance(exc, self._transient):
                        raise
                    failure = exc
                else:
                    event: Event = (
                        StepSucceeded(step.name, message.attempt)
                        if message.phase is Phase.DO
                        else CompensationSucceeded(step.name, message.attempt)
                    )
                    following = self._apply(
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
            raise MalformedMessage(f"no saga with id {message.saga_id!r}")
        state = record.state
        message.check_saga(state)
        definition = self.registry.get(state.name, state.version)
        try:
            step = definition.step(message.step)
        except KeyError:
            raise MalformedMessage(
                f"saga {state.name!r} v{state.version} has no step {message.step!r}"
            ) from None
        why = awaits(state, message.command())
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
        except (SagaError, KeyError):
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
        fn = step.action if message.phase is Phase.DO else step.compensation
        assert fn is not None  # the definition guarantees it for awaited commands
        ctx = StepContext(
            saga_id=state.saga_id,
            saga_name=state.name,
            step=step.name,
            attempt=message.attempt,
            input=definition.input_model.model_validate(record.input),
            data=dict(record.data),
            session=uow.session,
        )
        result = fn(ctx)
        # ORM rows the step added go out now, so their errors are the step's.
        uow.session.flush()
        return _step_output(step.name, result) if message.phase is Phase.DO else None

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
            following = self._apply(uow, record, definition, message, event, None, hold=hold)
            uow.commit()
            return Outcome.APPLIED, following

    def apply_event(
        self,
        uow: UnitOfWork,
        record: SagaRecord,
        definition: SagaDefinition,
        message: StepMessage,
        event: Event,
        output: Mapping[str, Any] | None,
    ) -> None:
        """The end of every handled chain step message, in the caller's transaction."""
        uow.inbox.record(message.message_id, record.saga_id)
        self._apply(uow, record, definition, message, event, output)

    def _apply(
        self,
        uow: UnitOfWork,
        record: SagaRecord,
        definition: SagaDefinition,
        message: StepMessage,
        event: Event,
        output: Mapping[str, Any] | None,
        *,
        hold: bool = False,
    ) -> StepMessage | None:
        """The transition an event makes, its state, messages and history (not the inbox).

        With `hold`, a single next command for a local step, due now, is written
        held back by the inline reserve and returned, for the caller to run inline.
        """
        state = record.state
        t = transition(definition, state, event)
        if t.accepted:
            step_report.note(event, t.state)
        if output and message.phase is Phase.DO:
            record.data[message.step] = dict(output)
        record = replace(record, state=t.state, updated_at=_now())
        uow.sagas.save(record)
        following = None
        if hold and _runs_inline(definition, t.commands):
            following = self._message(t.state, t.commands[0])
            self._send(uow, following, self.inline_reserve)
        else:
            self._emit(uow, t.state, t.commands)
        if _worth_a_note(state, event):
            self._note(uow, state.saga_id, _event_kind(event), _event_detail(event))
        if t.state.status != state.status:
            self._note(uow, state.saga_id, f"saga {t.state.status}", {"reason": t.state.reason})
        metrics.event_applied(state, t.state, event)
        return following

    def recheck(self, uow: UnitOfWork, message: StepMessage, delay: float) -> None:
        """A new message for the same step and attempt: the chain step is verified again."""
        again = StepMessage(
            message_id=self._new_id(),
            saga_id=message.saga_id,
            saga=message.saga,
            version=message.version,
            step=message.step,
            attempt=message.attempt,
            phase=message.phase,
        )
        uow.outbox.add(
            OutboxMessage(
                message_id=again.message_id,
                saga_id=again.saga_id,
                body=again.to_body(),
                delay=delay,
            )
        )

    @staticmethod
    def _failure_event(message: StepMessage, exc: Exception) -> Event:
        names = error_names(exc)
        text = str(exc) or type(exc).__name__
        if message.phase is Phase.DO:
            return StepFailed(message.step, message.attempt, names, text)
        return CompensationFailed(message.step, message.attempt, names, text)

    # -- operators --------------------------------------------------------------

    def resume(self, saga_id: str, *, actor: str, why: str) -> SagaState:
        return self._operator(saga_id, ResumeRequested(actor, why), actor)

    def compensate(self, saga_id: str, *, actor: str, why: str) -> SagaState:
        return self._operator(saga_id, CompensateRequested(actor, why), actor)

    def retry(self, saga_id: str, *, actor: str, why: str) -> StepMessage:
        """Drive the current step (or compensation) attempt again now, through the worker.

        The message names the attempt already in progress, so it takes the normal
        path: a local step runs only if that attempt is still awaited, and a chain
        step verifies its recorded transactions before anything is submitted.
        """
        with self._uow() as uow:
            record = uow.sagas.get(saga_id, for_update=True)
            if record is None:
                raise SagaNotFound(saga_id)
            state = record.state
            current = state.steps[state.current]
            if state.status is SagaStatus.RUNNING and current.status is StepStatus.PENDING:
                phase, attempt = Phase.DO, current.attempts
            elif state.status is SagaStatus.COMPENSATING and current.status is StepStatus.DONE:
                phase, attempt = Phase.UNDO, current.compensation_attempts
            elif state.status is SagaStatus.FAILED:
                raise OperatorActionRefused(
                    "only a running or compensating saga can be retried; this one is failed "
                    "(resume it to try again with a fresh budget, or compensate it)"
                )
            else:
                raise OperatorActionRefused(
                    f"only a running or compensating saga can be retried; this one is "
                    f"{state.status}, nothing is left to run"
                )
            if attempt < 1:
                raise OperatorActionRefused(f"step {current.name!r} has not started yet")
            message = StepMessage(
                message_id=self._new_id(),
                saga_id=saga_id,
                saga=state.name,
                version=state.version,
                step=current.name,
                attempt=attempt,
                phase=phase,
            )
            uow.outbox.add(OutboxMessage(message.message_id, saga_id, message.to_body()))
            detail = {
                "step": current.name,
                "attempt": attempt,
                "phase": str(phase),
                "message_id": message.message_id,
                "why": why,
            }
            self._note(uow, saga_id, "retry requested", detail, actor=actor)
            uow.commit()
            return message

    def note(self, saga_id: str, kind: str, detail: dict[str, Any], *, actor: str) -> bool:
        """Record an operator action on a saga's history; False if there is no such saga."""
        with self._uow() as uow:
            if uow.sagas.get(saga_id) is None:
                return False
            self._note(uow, saga_id, kind, detail, actor=actor)
            uow.commit()
            return True

    def _operator(self, saga_id: str, event: Event, actor: str) -> SagaState:
        with self._uow() as uow:
            record = uow.sagas.get(saga_id, for_update=True)
            if record is None:
                raise SagaNotFound(saga_id)
            definition = self.registry.get(record.state.name, record.state.version)
            if isinstance(event, CompensateRequested):
                _refuse_if_chain_unsettled(uow, record, definition)
            t = transition(definition, record.state, event)
            if not t.accepted:
                raise OperatorActionRefused(t.note)
            uow.sagas.save(replace(record, state=t.state, updated_at=_now()))
            self._emit(uow, t.state, t.commands)
            self._note(uow, saga_id, _event_kind(event), _event_detail(event), actor=actor)
            uow.commit()
            return t.state

    # -- reading ----------------------------------------------------------------

    def get(self, saga_id: str) -> tuple[SagaRecord, list[HistoryEntry]]:
        with self._uow() as uow:
            record = uow.sagas.get(saga_id)
            if record is None:
                raise SagaNotFound(saga_id)
            return record, uow.history.for_saga(saga_id)

    # -- helpers ----------------------------------------------------------------

    def _emit(self, uow: UnitOfWork, state: SagaState, commands: tuple[Command, ...]) -> None:
        for command in commands:
            self._send(uow, self._message(state, command), command.delay)

    def _message(self, state: SagaState, command: Command) -> StepMessage:
        return StepMessage.for_command(state, command, self._new_id())

    @staticmethod
    def _send(uow: UnitOfWork, message: StepMessage, delay: float) -> None:
        uow.outbox.add(
            OutboxMessage(
                message_id=message.message_id,
                saga_id=message.saga_id,
                body=message.to_body(),
                delay=delay,
            )
        )

    @staticmethod
    def _note(
        uow: UnitOfWork,
        saga_id: str,
        kind: str,
        detail: dict[str, Any],
        actor: str | None = None,
    ) -> None:
        uow.history.add(HistoryEntry(_now(), saga_id, kind, detail, actor))


def _refuse_if_chain_unsettled(
    uow: UnitOfWork, record: SagaRecord, definition: SagaDefinition
) -> None:
    """Abandoning a pending chain step is only safe once none of its transactions can be VALID.

    The machine would mark the step FAILED and compensate the steps before it; a
    transaction of that step committing afterwards would leave an effect on the
    ledger that nothing reverses.
    """
    state = record.state
    current = state.steps[state.current]
    # FAILED too: a chain step that gave up in doubt (or was marked stuck) still
    # has transactions that may commit.
    if current.status not in (StepStatus.PENDING, StepStatus.FAILED):
        return
    if definition.steps[state.current].kind is not StepKind.CHAIN:
        return
    attempts = uow.ledger_attempts.for_step(state.saga_id, current.name, Purpose.DO)
    open_ = [a.txid for a in attempts if a.state is not AttemptState.COMMITTED or a.code == VALID]
    if open_:
        raise OperatorActionRefused(
            f"chain step {current.name!r} has transaction(s) {', '.join(open_)} that committed "
            "VALID or may still commit; let the step settle (or resume it), then compensate"
        )


def _runs_inline(definition: SagaDefinition, commands: tuple[Command, ...]) -> bool:
    """One next command, due now, for a local step: the worker may run it inline."""
    if len(commands) != 1 or commands[0].delay != 0:
        return False
    return definition.step(commands[0].step).kind is not StepKind.CHAIN


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


def _event_kind(event: Event) -> str:
    return {
        Started: "started",
        StepSucceeded: "step succeeded",
        StepFailed: "step failed",
        CompensationSucceeded: "compensation succeeded",
        CompensationFailed: "compensation failed",
        ResumeRequested: "resume requested",
        CompensateRequested: "compensation requested",
        MarkedStuck: "marked stuck",
        LedgerWait: "waiting for the ledger",
        LedgerReached: "ledger reached again",
    }[type(event)]


def _worth_a_note(before: SagaState, event: Event) -> bool:
    """History keeps changes: a step that goes on waiting for the ledger is not one."""
    if isinstance(event, LedgerWait) and event.retry_in is not None:
        return before.steps[before.current].waiting_since is None
    return True


def _event_detail(event: Event) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    for key in ("step", "attempt", "message", "why", "error"):
        if hasattr(event, key):
            detail[key] = getattr(event, key)
    if isinstance(event, StepFailed | CompensationFailed) and event.error_types:
        detail["error"] = event.error_types[0]
    return detail
