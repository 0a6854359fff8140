"""The telemetry port: what the application reports as it works, named by event.

The application services take a Telemetry in their constructor and call it at the
moments below; they never name a metrics library. The composition root hands them
the Prometheus adapter (saga.adapters.prometheus.telemetry); anything built without
one gets NO_TELEMETRY, which does nothing. `event_applied` is called inside a
step's transaction and must never raise into it (a count is for rates, the store
is the record).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from saga.core.messages import Event
    from saga.core.state import SagaState
    from saga.ports.store import LedgerAttemptRecord


class Telemetry(Protocol):
    # -- starting and running sagas ---------------------------------------------------

    def saga_enqueued(self, saga: str) -> None:
        """A saga was started (not a repeated request with the same key)."""

    def step_running(self, kind: str, phase: object) -> AbstractContextManager[None]:
        """Around the handling of one step message (kind: local or chain; phase: do/undo)."""
        ...

    def inline_step(self, saga: str, step: str, phase: object) -> None:
        """A worker took a step message from the outbox and ran it itself."""

    def fused_step(self, saga: str, step: str, phase: object) -> None:
        """A step ran and committed in the transaction of the step before it; its
        message was never written (so it is neither published nor taken inline)."""

    def fused_run_rolled_back(self, saga: str, step: str, phase: object, runs: int) -> None:
        """`step` failed inside a fused run: the transaction was rolled back, and the
        `runs` steps before `step` run again one step per transaction (`step` itself
        is not run again: its failure is recorded)."""

    def event_applied(self, before: SagaState, after: SagaState, event: Event) -> None:
        """An event went through the state machine (in the step's transaction)."""

    # -- chain steps --------------------------------------------------------------------

    def chain_decided(self, decision: object) -> None:
        """A verify pass of a chain step took this decision."""

    def chain_transactions(self, event: str, count: int = 1) -> None:
        """Ledger transactions were prepared (a new txid) or resubmitted (same envelope)."""

    def ledger_waited(self, kind: str, gave_up: bool) -> None:
        """A chain step found the ledger unreachable; waits on, or went to an operator."""

    # -- relay, watcher, sweeper ---------------------------------------------------------

    def relay_published(self, count: int) -> None:
        """The relay published a batch of `count` outbox rows with a confirm."""

    def relay_failed(self) -> None:
        """A relay batch failed (retried with backoff)."""

    def watcher_committed(self, record: LedgerAttemptRecord, valid: bool) -> None:
        """The watcher saw the attempt's transaction commit, VALID or not."""

    def sweeper_redrove(self) -> None:
        """The sweeper re-drove a stuck saga through the verify path."""

    def sweeper_marked_stuck(self) -> None:
        """The sweeper marked a saga for an operator."""

    def sweeper_settled_attempt(self, result: str) -> None:
        """The sweeper settled (or gave up on) an unsettled attempt of a terminal saga."""


class NoTelemetry:
    """Reports nothing: the default of every service built without the composition root."""

    def saga_enqueued(self, saga: str) -> None:
        pass

    @contextmanager
    def step_running(self, kind: str, phase: object) -> Iterator[None]:
        yield

    def inline_step(self, saga: str, step: str, phase: object) -> None:
        pass

    def fused_step(self, saga: str, step: str, phase: object) -> None:
        pass

    def fused_run_rolled_back(self, saga: str, step: str, phase: object, runs: int) -> None:
        pass

    def event_applied(self, before: SagaState, after: SagaState, event: Event) -> None:
        pass

    def chain_decided(self, decision: object) -> None:
        pass

    def chain_transactions(self, event: str, count: int = 1) -> None:
        pass

    def ledger_waited(self, kind: str, gave_up: bool) -> None:
        pass

    def relay_published(self, count: int) -> None:
        pass

    def relay_failed(self) -> None:
        pass

    def watcher_committed(self, record: LedgerAttemptRecord, valid: bool) -> None:
        pass

    def sweeper_redrove(self) -> None:
        pass

    def sweeper_marked_stuck(self) -> None:
        pass

    def sweeper_settled_attempt(self, result: str) -> None:
        pass


NO_TELEMETRY: Telemetry = NoTelemetry()
