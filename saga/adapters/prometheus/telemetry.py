"""The telemetry port (saga.ports.telemetry) implemented with the process's Prometheus
instruments (saga.adapters.prometheus.metrics): each event counted as it always was."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from saga.adapters.prometheus import metrics

if TYPE_CHECKING:
    from saga.core.messages import Event
    from saga.core.state import SagaState
    from saga.ports.store import LedgerAttemptRecord


class PrometheusTelemetry:
    def saga_enqueued(self, saga: str) -> None:
        metrics.enqueued(saga)

    def step_running(self, kind: str, phase: object) -> AbstractContextManager[None]:
        return metrics.step_timer(kind, phase)

    def inline_step(self, saga: str, step: str, phase: object) -> None:
        metrics.inline_step(saga, step, phase)

    def fused_step(self, saga: str, step: str, phase: object) -> None:
        metrics.fused_step(saga, step, phase)

    def fused_run_rolled_back(self, saga: str, step: str, phase: object, runs: int) -> None:
        metrics.fused_run_rolled_back(saga, step, phase, runs)

    def event_applied(self, before: SagaState, after: SagaState, event: Event) -> None:
        metrics.event_applied(before, after, event)

    def chain_decided(self, decision: object) -> None:
        metrics.chain_decision(decision)

    def chain_transactions(self, event: str, count: int = 1) -> None:
        metrics.chain_transaction(event, count)

    def ledger_waited(self, kind: str, gave_up: bool) -> None:
        metrics.ledger_wait(kind, gave_up)

    def relay_published(self, count: int) -> None:
        metrics.relay_batch(count)

    def relay_failed(self) -> None:
        metrics.relay_failure()

    def watcher_committed(self, record: LedgerAttemptRecord, valid: bool) -> None:
        metrics.commit_seen(record, valid)

    def sweeper_redrove(self) -> None:
        metrics.instruments().sweeper_redrives.inc()

    def sweeper_marked_stuck(self) -> None:
        metrics.instruments().sweeper_stuck.inc()

    def sweeper_settled_attempt(self, result: str) -> None:
        metrics.instruments().sweeper_attempts.labels(result).inc()
