"""How a step task ends for Celery, so Flower shows what happened to the step.

The step's own outcome is already committed when the task ends, and the message
is acked whichever way it ends (late acks; Celery acks a task that failed or
asked for a retry, see task_acks_on_failure_or_timeout), so these states change
what monitoring shows, never what runs:

- SUCCESS: every step the task ran took effect (or a chain transaction went out);
- FAILURE (`StepFailedError`): a step or compensation failed for good, so the saga
  compensates or waits for an operator;
- RETRY (Celery's `Retry` around `StepRetriedError`): a step or compensation failed
  or found the ledger away and runs again later, from a new outbox message (this
  task publishes no copy of itself);
- SKIPPED (`NothingToDo`, a custom task event): the message asked for nothing
  left to do: the step was done already (a duplicate delivery) or the saga has
  moved on (a re-check sent while the commit watcher settled the step first).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import Ignore, Retry
from celery.worker.request import Request

from saga.core.errors import SagaError
from saga.core.purpose import Purpose
from saga.core.step_message import StepMessage
from saga.core.step_report import Setback

# Task results that mean the message had nothing to do (saga.app.steps.Outcome).
NOTHING_TO_DO = {
    "duplicate": "the step message was handled before (a redelivery)",
    "stale": "the saga no longer waits for this step attempt",
}
SKIPPED_EVENT = "task-skipped"

log = logging.getLogger("saga.worker")


class StepSetbackError(SagaError):
    """Base of the two below; `inline` names the step that failed when it is not
    the one the message asked for (it ran inline after it), e.g. "record_payment"."""

    def __init__(self, text: str, inline: str = "") -> None:
        super().__init__(text)
        self.inline = inline

    def __reduce__(self) -> Any:
        # Pickled from the pool process to the worker's main process.
        return type(self), (str(self), self.inline)


class StepFailedError(StepSetbackError):
    """A step or compensation this task ran failed for good (recorded on the saga)."""


class StepRetriedError(StepSetbackError):
    """A step or compensation this task ran failed or waited and runs again later."""


class NothingToDo(Ignore):
    """The message was acked without running anything; the reason is the message."""


def end_task(message: StepMessage, outcome: str, setbacks: Sequence[Setback]) -> str:
    """The task's return value, or the exception that gives it its state."""
    if setbacks:
        text = "; ".join(s.describe() for s in setbacks)
        worst = next((s for s in setbacks if s.final), setbacks[0])
        inline = ""
        if (worst.step, worst.compensation) != (message.step, message.phase is Purpose.UNDO):
            inline = worst.step + (".compensate" if worst.compensation else "")
        if worst.final:
            raise StepFailedError(text, inline)
        # Raised directly, not through Task.retry(): the next attempt is already in
        # the outbox, so no copy of this message may be published.
        raise Retry(text, exc=StepRetriedError(text, inline))
    if outcome in NOTHING_TO_DO:
        raise NothingToDo(f"{outcome}: {NOTHING_TO_DO[outcome]}")
    return outcome


class StepRequest(Request):
    """The worker's request for step tasks.

    A skipped message ends as SKIPPED: Celery acks an ignored task without any
    final event, which would leave it STARTED in Flower for ever. A failure in a
    step run inline renames the task in its final event ("order-payment.
    reserve_funds > record_payment"), so the name column shows the step that failed.
    """

    _inline_setback = ""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        setback = exc.exc if isinstance(exc, Retry) else exc
        if isinstance(setback, StepSetbackError):
            self._inline_setback = setback.inline
        result = super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )
        if isinstance(exc, NothingToDo):
            # Celery's own line says only "ignored"; this one says why.
            log.info("Task %s[%s] skipped: %s", self.name, self.id, exc)
            self.send_event(SKIPPED_EVENT, result=str(exc))
        return result

    def send_event(self, type: str, **fields: Any) -> None:
        if self._inline_setback and type in ("task-failed", "task-retried"):
            # Monitors take every field of a task's latest event, the name included.
            fields["name"] = f"{self.name} > {self._inline_setback}"
        super().send_event(type, **fields)
