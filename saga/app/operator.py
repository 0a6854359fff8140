"""Operator commands on one saga: resume, compensate, retry the current attempt, note."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from saga.app.errors import OperatorActionRefused, SagaNotFound
from saga.app.transitions import SagaWriter, event_detail, event_kind, now
from saga.core.chain import VALID, AttemptState
from saga.core.definitions import Registry, SagaDefinition, StepKind
from saga.core.machine import transition
from saga.core.messages import CompensateRequested, Event, ResumeRequested
from saga.core.purpose import Purpose
from saga.core.state import SagaState, SagaStatus, StepStatus
from saga.core.step_message import StepMessage
from saga.ports.store import OutboxMessage, SagaRecord, UnitOfWork, UnitOfWorkFactory


class OperatorCommands:
    """What an operator may do to a saga; every action is recorded in its history."""

    def __init__(self, registry: Registry, uow_factory: UnitOfWorkFactory, writer: SagaWriter):
        self.registry = registry
        self._uow = uow_factory
        self._writer = writer

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
                phase, attempt = Purpose.DO, current.attempts
            elif state.status is SagaStatus.COMPENSATING and current.status is StepStatus.DONE:
                phase, attempt = Purpose.UNDO, current.compensation_attempts
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
                message_id=self._writer.new_id(),
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
            self._writer.note(uow, saga_id, "retry requested", detail, actor=actor)
            uow.commit()
            return message

    def note(self, saga_id: str, kind: str, detail: dict[str, Any], *, actor: str) -> bool:
        """Record an operator action on a saga's history; False if there is no such saga."""
        with self._uow() as uow:
            if uow.sagas.get(saga_id) is None:
                return False
            self._writer.note(uow, saga_id, kind, detail, actor=actor)
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
            uow.sagas.save(replace(record, state=t.state, updated_at=now()))
            self._writer.emit(uow, t.state, t.commands)
            self._writer.note(uow, saga_id, event_kind(event), event_detail(event), actor=actor)
            uow.commit()
            return t.state


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
