"""Applying an event to a saga in the caller's unit of work.

One write path for every part of the application: the state machine's
transition, the saga's new state and data, the next messages in the outbox and
the history. The step runner, the operator commands, starting a saga and the
chain step executor (through `ChainStepHooks`: `apply_event`, `recheck`) all
write through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from saga.core import step_report
from saga.core.definitions import SagaDefinition, StepKind
from saga.core.machine import transition
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
from saga.core.purpose import Purpose
from saga.core.state import SagaState
from saga.core.step_message import StepMessage
from saga.ports.store import HistoryEntry, OutboxMessage, SagaRecord, UnitOfWork
from saga.ports.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger("saga.orchestrator")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Advance:
    """A saga moved on in memory by `SagaWriter.advance`, not yet written."""

    record: SagaRecord
    commands: tuple[Command, ...] = ()
    notes: list[HistoryEntry] = field(default_factory=list)
    # (state before, state after, event, accepted) of each transition, for the
    # telemetry and the setbacks, told once the run is written.
    applied: list[tuple[SagaState, SagaState, Event, bool]] = field(default_factory=list)


class SagaWriter:
    """Writes what an event does to a saga; the chain executor's `ChainStepHooks`."""

    def __init__(
        self,
        new_id: Callable[[], str],
        inline_reserve: float,
        *,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self.new_id = new_id
        self.telemetry = telemetry
        # How long a message written for an inline step is held back from the relay.
        self.inline_reserve = inline_reserve

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
        self.apply(uow, record, definition, message, event, output)

    def apply(
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
        run = Advance(record)
        self.advance(run, definition, message, event, output)
        return self.write(uow, run, definition, hold=hold)

    def advance(
        self,
        run: Advance,
        definition: SagaDefinition,
        message: StepMessage,
        event: Event,
        output: Mapping[str, Any] | None,
    ) -> None:
        """Apply an event to the saga in memory only; `write` stores what the run did.

        Several events in a row (a fused run of local steps) end in one write.
        """
        before = run.record.state
        t = transition(definition, before, event)
        data = run.record.data
        if output and message.phase is Purpose.DO:
            data = {**data, message.step: dict(output)}
        run.record = replace(run.record, state=t.state, data=data, updated_at=now())
        run.commands = t.commands
        if _worth_a_note(before, event):
            run.notes.append(
                HistoryEntry(now(), before.saga_id, event_kind(event), event_detail(event))
            )
        if t.state.status != before.status:
            run.notes.append(
                HistoryEntry(
                    now(), before.saga_id, f"saga {t.state.status}", {"reason": t.state.reason}
                )
            )
        run.applied.append((before, t.state, event, t.accepted))

    def write(
        self, uow: UnitOfWork, run: Advance, definition: SagaDefinition, *, hold: bool = False
    ) -> StepMessage | None:
        """Store what `advance` did: the saga once, the last transition's messages, the notes.

        With `hold`, see `apply`.
        """
        state = run.record.state
        uow.sagas.save(run.record)
        following = None
        if hold and runs_inline(definition, run.commands):
            following = self.message(state, run.commands[0])
            self.send(uow, following, self.inline_reserve)
        else:
            self.emit(uow, state, run.commands)
        if len(run.notes) == 1:
            uow.history.add(run.notes[0])
        elif run.notes:
            uow.history.add_many(run.notes)
        for before, after, event, accepted in run.applied:
            if accepted:
                step_report.note(event, after)
            self.telemetry.event_applied(before, after, event)
        return following

    def recheck(self, uow: UnitOfWork, message: StepMessage, delay: float) -> None:
        """A new message for the same step and attempt: the chain step is verified again."""
        again = StepMessage(
            message_id=self.new_id(),
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

    def emit(self, uow: UnitOfWork, state: SagaState, commands: tuple[Command, ...]) -> None:
        for command in commands:
            self.send(uow, self.message(state, command), command.delay)

    def message(self, state: SagaState, command: Command) -> StepMessage:
        return StepMessage.for_command(state, command, self.new_id())

    def outbox_message(self, state: SagaState, command: Command) -> OutboxMessage:
        """The outbox row that sends `command` (`emit` writes these one by one)."""
        message = self.message(state, command)
        return OutboxMessage(message.message_id, message.saga_id, message.to_body(), command.delay)

    @staticmethod
    def send(uow: UnitOfWork, message: StepMessage, delay: float) -> None:
        uow.outbox.add(
            OutboxMessage(
                message_id=message.message_id,
                saga_id=message.saga_id,
                body=message.to_body(),
                delay=delay,
            )
        )

    @staticmethod
    def note(
        uow: UnitOfWork,
        saga_id: str,
        kind: str,
        detail: dict[str, Any],
        actor: str | None = None,
    ) -> None:
        uow.history.add(HistoryEntry(now(), saga_id, kind, detail, actor))


def runs_inline(definition: SagaDefinition, commands: tuple[Command, ...]) -> bool:
    """One next command, due now, for a local step: the worker may run it inline."""
    if len(commands) != 1 or commands[0].delay != 0:
        return False
    return definition.step(commands[0].step).kind is not StepKind.CHAIN


def event_kind(event: Event) -> str:
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


def event_detail(event: Event) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    for key in ("step", "attempt", "message", "why", "error"):
        if hasattr(event, key):
            detail[key] = getattr(event, key)
    if isinstance(event, StepFailed | CompensationFailed) and event.error_types:
        detail["error"] = event.error_types[0]
    return detail
