"""The application service's facade: starts sagas and runs the step a message asks for.

It speaks only to ports (unit of work, registry, ledger) and the pure core;
Celery tasks, the HTTP API and the CLI call it, and tests drive it with
in-memory fakes or real stores. Each job lives in its own module and this class
only wires them together:

- `saga.app.starting`: validating input, idempotency keys, starting a saga;
- `saga.app.steps`: handling a step message, with following local steps inline;
- `saga.app.transitions`: applying an event (state, outbox, history), also for
  the chain step executor (`saga.app.chain`);
- `saga.app.operator`: resume, compensate, retry, note;
- `saga.app.reads`: one saga with its history;
- `saga.app.errors`: what callers are told when a request is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from saga.app.chain.executor import ChainSettings, ChainStepExecutor
from saga.app.operator import OperatorCommands
from saga.app.reads import SagaReader
from saga.app.starting import Enqueued, Starter
from saga.app.steps import Outcome, StepRunner
from saga.app.transitions import SagaWriter, now
from saga.core import step_report
from saga.core.definitions import Registry, SagaDefinition
from saga.core.errors import UnknownSaga
from saga.core.state import SagaState
from saga.core.step_message import StepMessage
from saga.ports.ledger import Ledger
from saga.ports.store import (
    HistoryEntry,
    SagaRecord,
    SagaStarts,
    StoreUnavailable,
    UnitOfWork,
    UnitOfWorkFactory,
)
from saga.ports.telemetry import NO_TELEMETRY, Telemetry


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
        fuse_steps: bool = True,
        starts: SagaStarts | None = None,
        clock: Callable[[], datetime] = now,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        """`ledger` is called when a chain step first needs it (the composition root
        connects lazily, after a worker forks); None: chain steps are refused with
        the settings to set. `inline_reserve`, `fuse_steps`: see `handle(inline=...)`.
        `starts`: how the enqueue writes a saga (default: in a unit of work). `clock`
        times chain steps (their timeouts and ledger outages). `telemetry` hears what
        every part reports (the composition root gives the Prometheus one)."""
        self.registry = registry
        self._uow = uow_factory
        self.writer = SagaWriter(new_id, inline_reserve, telemetry=telemetry)
        self.chain = ChainStepExecutor(
            uow_factory, ledger, self.writer, chain_settings, clock=clock, telemetry=telemetry
        )
        self.starter = Starter(
            registry, uow_factory, self.writer, starts=starts, telemetry=telemetry
        )
        self.steps = StepRunner(
            registry,
            uow_factory,
            self.writer,
            self.chain,
            (StoreUnavailable, *transient_errors),
            fuse=fuse_steps,
            telemetry=telemetry,
        )
        self.operator = OperatorCommands(registry, uow_factory, self.writer)
        self.reader = SagaReader(uow_factory)

    @property
    def uow_factory(self) -> UnitOfWorkFactory:
        return self._uow

    @property
    def inline_reserve(self) -> float:
        return self.writer.inline_reserve

    # -- starting (saga.app.starting) -------------------------------------------

    def validate(self, saga: str, payload: object) -> tuple[SagaDefinition, BaseModel]:
        return self.starter.validate(saga, payload)

    def enqueue(
        self, saga: str, payload: object, *, idempotency_key: str | None = None
    ) -> Enqueued:
        """Start a saga; with a key, a repeated request returns the first saga's id."""
        return self.starter.enqueue(saga, payload, idempotency_key=idempotency_key)

    # -- running steps (saga.app.steps) -----------------------------------------

    def handle(self, message: StepMessage, *, inline: int = 0) -> Outcome:
        """Run the step or compensation the message asks for, exactly once (see StepRunner)."""
        return self.steps.handle(message, inline=inline)

    def handle_reporting(
        self, message: StepMessage, *, inline: int = 0
    ) -> tuple[Outcome, list[step_report.Setback]]:
        """handle(), and the failures and ledger waits it applied (inline steps included)."""
        return self.steps.handle_reporting(message, inline=inline)

    def settle_valid_commit(
        self, uow: UnitOfWork, record: SagaRecord, message: StepMessage, txid: str
    ) -> bool:
        """The awaited chain step committed VALID in `txid`: record its success in the
        caller's transaction (the commit watcher's, saga locked); see
        ChainStepExecutor.settle_valid. False when these definitions do not hold the
        saga's (the caller sends the step its message instead)."""
        try:
            definition = self.registry.get(record.state.name, record.state.version)
        except UnknownSaga:
            return False
        self.chain.settle_valid(uow, record, definition, message, txid)
        return True

    # -- operators (saga.app.operator) ------------------------------------------

    def resume(self, saga_id: str, *, actor: str, why: str) -> SagaState:
        return self.operator.resume(saga_id, actor=actor, why=why)

    def compensate(self, saga_id: str, *, actor: str, why: str) -> SagaState:
        return self.operator.compensate(saga_id, actor=actor, why=why)

    def retry(self, saga_id: str, *, actor: str, why: str) -> StepMessage:
        """Drive the current step (or compensation) attempt again now, through the worker."""
        return self.operator.retry(saga_id, actor=actor, why=why)

    def note(self, saga_id: str, kind: str, detail: dict[str, Any], *, actor: str) -> bool:
        """Record an operator action on a saga's history; False if there is no such saga."""
        return self.operator.note(saga_id, kind, detail, actor=actor)

    # -- reading (saga.app.reads) -----------------------------------------------

    def get(self, saga_id: str) -> tuple[SagaRecord, list[HistoryEntry]]:
        return self.reader.get(saga_id)
