"""The saga state machine: (definition, state, event) -> (state, commands).

Pure: no clock, no randomness, no I/O. Every event names the step and the
attempt it reports on; an event that does not match what the saga is waiting for
(a redelivery, a duplicate, a late answer to an earlier attempt) is refused and
changes nothing, which is what makes redelivered messages harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from saga.core.definitions import SagaDefinition
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
    RunCompensation,
    RunStep,
    Started,
    StepFailed,
    StepSucceeded,
)
from saga.core.state import SagaState, SagaStatus, StepStatus


@dataclass(frozen=True)
class Transition:
    state: SagaState
    commands: tuple[Command, ...] = ()
    accepted: bool = True
    note: str = ""


def _refuse(state: SagaState, why: str) -> Transition:
    return Transition(state, (), accepted=False, note=why)


def transition(definition: SagaDefinition, state: SagaState, event: Event) -> Transition:
    if (state.name, state.version) != definition.key:
        raise ValueError(
            f"saga {state.saga_id} runs {state.name!r} v{state.version}, "
            f"not {definition.name!r} v{definition.version}"
        )
    match event:
        case Started():
            return _start(state)
        case StepSucceeded():
            return _step_succeeded(definition, state, event)
        case StepFailed():
            return _step_failed(definition, state, event)
        case CompensationSucceeded():
            return _compensation_succeeded(state, event)
        case CompensationFailed():
            return _compensation_failed(definition, state, event)
        case LedgerWait():
            return _ledger_wait(state, event)
        case LedgerReached():
            return _ledger_reached(state, event)
        case ResumeRequested():
            return _resume(state, event)
        case CompensateRequested():
            return _compensate_requested(definition, state, event)
        case MarkedStuck():
            return _marked_stuck(state, event)
    raise TypeError(f"not a saga event: {event!r}")


def _start(state: SagaState) -> Transition:
    if state.status is not SagaStatus.RUNNING or state.current != 0 or state.steps[0].attempts:
        return _refuse(state, "already started")
    first = state.steps[0]
    new = state.with_step(0, attempts=1)
    return Transition(new, (RunStep(first.name, 1),))


def _expecting_step(state: SagaState, step: str, attempt: int) -> str | None:
    """Why an answer about (step, attempt) is not the one awaited, or None if it is."""
    if state.status is not SagaStatus.RUNNING:
        return f"saga is {state.status}"
    current = state.steps[state.current]
    if current.name != step:
        return f"saga is at step {current.name!r}, not {step!r}"
    if current.status is not StepStatus.PENDING:
        return f"step {step!r} is {current.status}"
    if current.attempts != attempt:
        return f"step {step!r} is at attempt {current.attempts}, not {attempt}"
    return None


def _step_succeeded(
    definition: SagaDefinition, state: SagaState, event: StepSucceeded
) -> Transition:
    why = _expecting_step(state, event.step, event.attempt)
    if why:
        return _refuse(state, why)
    i = state.current
    new = state.with_step(i, status=StepStatus.DONE, last_error=None, waiting_since=None)
    if i + 1 == len(state.steps):
        return Transition(replace(new, status=SagaStatus.COMPLETED))
    new = replace(new, current=i + 1).with_step(i + 1, attempts=1, failures=0)
    return Transition(new, (RunStep(state.steps[i + 1].name, 1),))


def _step_failed(definition: SagaDefinition, state: SagaState, event: StepFailed) -> Transition:
    why = _expecting_step(state, event.step, event.attempt)
    if why:
        return _refuse(state, why)
    i = state.current
    step_def = definition.steps[i]
    cur = state.steps[i]
    failures = cur.failures + 1
    error = f"{event.error_types[0] if event.error_types else 'Error'}: {event.message}"
    new = state.with_step(i, failures=failures, last_error=error, waiting_since=None)
    if not step_def.retry.gives_up(failures, event.error_types):
        attempt = cur.attempts + 1
        new = new.with_step(i, attempts=attempt)
        return Transition(new, (RunStep(cur.name, attempt, step_def.retry.backoff(failures)),))

    if event.in_doubt:
        new = new.with_step(i, status=StepStatus.FAILED)
        reason = (
            f"step {cur.name!r} gave up with its ledger outcome unknown ({error}); "
            "nothing was compensated: look up each of its transactions (`saga show` lists "
            "them; `saga ledger tx TXID` says whether one committed), then resume"
        )
        return Transition(replace(new, status=SagaStatus.FAILED, reason=reason))
    if i > definition.pivot_index:
        # Past the pivot the saga must go forward; an operator decides what next.
        new = new.with_step(i, status=StepStatus.FAILED)
        reason = f"step {cur.name!r} after the pivot failed for good ({error})"
        return Transition(replace(new, status=SagaStatus.FAILED, reason=reason))
    new = new.with_step(i, status=StepStatus.FAILED)
    reason = f"step {cur.name!r} failed for good ({error})"
    return _compensate_from(replace(new, reason=reason), i - 1)


def _compensate_from(state: SagaState, start: int) -> Transition:
    """Compensate the highest DONE step at or below `start`, or finish compensated."""
    for j in range(start, -1, -1):
        if state.steps[j].status is StepStatus.DONE:
            attempt = state.steps[j].compensation_attempts + 1
            new = replace(state, status=SagaStatus.COMPENSATING, current=j).with_step(
                j, compensation_attempts=attempt, compensation_failures=0
            )
            return Transition(new, (RunCompensation(state.steps[j].name, attempt),))
    return Transition(replace(state, status=SagaStatus.COMPENSATED))


def _expecting_compensation(state: SagaState, step: str, attempt: int) -> str | None:
    if state.status is not SagaStatus.COMPENSATING:
        return f"saga is {state.status}"
    current = state.steps[state.current]
    if current.name != step:
        return f"saga is compensating {current.name!r}, not {step!r}"
    if current.status is not StepStatus.DONE:
        return f"step {step!r} is {current.status}"
    if current.compensation_attempts != attempt:
        return f"compensation of {step!r} is at attempt {current.compensation_attempts}"
    return None


def _compensation_succeeded(state: SagaState, event: CompensationSucceeded) -> Transition:
    why = _expecting_compensation(state, event.step, event.attempt)
    if why:
        return _refuse(state, why)
    j = state.current
    new = state.with_step(j, status=StepStatus.COMPENSATED, last_error=None, waiting_since=None)
    return _compensate_from(new, j - 1)


def _compensation_failed(
    definition: SagaDefinition, state: SagaState, event: CompensationFailed
) -> Transition:
    why = _expecting_compensation(state, event.step, event.attempt)
    if why:
        return _refuse(state, why)
    j = state.current
    policy = definition.steps[j].compensation_retry
    cur = state.steps[j]
    failures = cur.compensation_failures + 1
    error = f"{event.error_types[0] if event.error_types else 'Error'}: {event.message}"
    new = state.with_step(j, compensation_failures=failures, last_error=error, waiting_since=None)
    if not policy.gives_up(failures, event.error_types):
        attempt = cur.compensation_attempts + 1
        new = new.with_step(j, compensation_attempts=attempt)
        return Transition(new, (RunCompensation(cur.name, attempt, policy.backoff(failures)),))
    new = new.with_step(j, status=StepStatus.COMPENSATION_FAILED)
    reason = f"compensation of step {cur.name!r} failed for good ({error})"
    if state.reason:
        reason = f"{reason}{_BECAUSE}{state.reason}"
    return Transition(replace(new, status=SagaStatus.FAILED, reason=reason))


_BECAUSE = "; compensating because "


def _expecting_ledger_answer(state: SagaState, event: LedgerWait | LedgerReached) -> str | None:
    """Why a report about the ledger for (step, attempt) is not awaited, or None if it is."""
    if event.compensation:
        return _expecting_compensation(state, event.step, event.attempt)
    return _expecting_step(state, event.step, event.attempt)


def _ledger_wait(state: SagaState, event: LedgerWait) -> Transition:
    why = _expecting_ledger_answer(state, event)
    if why:
        return _refuse(state, why)
    i = state.current
    cur = state.steps[i]
    since = cur.waiting_since or event.since
    new = state.with_step(i, last_error=event.error, waiting_since=since)
    if event.retry_in is not None:
        # The same attempt again: an outage spends no attempt of the step's policy.
        command: RunStep | RunCompensation
        if event.compensation:
            command = RunCompensation(cur.name, cur.compensation_attempts, event.retry_in)
        else:
            command = RunStep(cur.name, cur.attempts, event.retry_in)
        return Transition(new, (command,))
    what = f"compensation of step {cur.name!r}" if event.compensation else f"step {cur.name!r}"
    reason = (
        f"{what} could not reach the ledger ({event.error}); nothing was compensated: "
        "make the ledger reachable, then resume"
    )
    if event.compensation:
        new = new.with_step(i, status=StepStatus.COMPENSATION_FAILED)
        if state.reason:
            reason = f"{reason}{_BECAUSE}{state.reason}"
    else:
        new = new.with_step(i, status=StepStatus.FAILED)
    return Transition(replace(new, status=SagaStatus.FAILED, reason=reason), note=reason)


def _ledger_reached(state: SagaState, event: LedgerReached) -> Transition:
    why = _expecting_ledger_answer(state, event)
    if why:
        return _refuse(state, why)
    if state.steps[state.current].waiting_since is None:
        return _refuse(state, "the step was not waiting for the ledger")
    new = state.with_step(state.current, waiting_since=None)
    return Transition(new, note="the ledger answers again")


def _resume(state: SagaState, event: ResumeRequested) -> Transition:
    if state.status is not SagaStatus.FAILED:
        return _refuse(state, f"only a failed saga can be resumed; this one is {state.status}")
    j = state.current
    cur = state.steps[j]
    note = f"resumed by {event.actor}: {event.why}"
    if cur.status is StepStatus.COMPENSATION_FAILED:
        attempt = cur.compensation_attempts + 1
        # Back to why the saga compensates, so a compensated saga never reads as
        # "compensation failed" once the resumed compensation succeeds.
        reason = (state.reason or "").partition(_BECAUSE)[2] or state.reason
        new = replace(state, status=SagaStatus.COMPENSATING, reason=reason).with_step(
            j,
            status=StepStatus.DONE,
            compensation_attempts=attempt,
            compensation_failures=0,
            waiting_since=None,
        )
        return Transition(new, (RunCompensation(cur.name, attempt),), note=note)
    attempt = cur.attempts + 1
    new = replace(state, status=SagaStatus.RUNNING, reason=None).with_step(
        j, status=StepStatus.PENDING, attempts=attempt, failures=0, waiting_since=None
    )
    return Transition(new, (RunStep(cur.name, attempt),), note=note)


STUCK_ERROR = "SagaStuck"


def _marked_stuck(state: SagaState, event: MarkedStuck) -> Transition:
    if state.status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        return _refuse(state, f"a {state.status} saga cannot be stuck")
    i = state.current
    error = f"{STUCK_ERROR}: {event.why}"
    if state.status is SagaStatus.COMPENSATING:
        reason = f"stuck: {event.why}{_BECAUSE}{state.reason}"
        new = state.with_step(i, status=StepStatus.COMPENSATION_FAILED, last_error=error)
    else:
        reason = f"stuck: {event.why}; see `saga show`, then `saga resume` or `saga compensate`"
        new = state.with_step(i, status=StepStatus.FAILED, last_error=error)
    return Transition(replace(new, status=SagaStatus.FAILED, reason=reason), note=reason)


def _compensate_requested(
    definition: SagaDefinition, state: SagaState, event: CompensateRequested
) -> Transition:
    if state.status not in (SagaStatus.RUNNING, SagaStatus.FAILED):
        return _refuse(state, f"a {state.status} saga cannot be compensated")
    if state.status is SagaStatus.FAILED and (
        state.steps[state.current].status is StepStatus.COMPENSATION_FAILED
    ):
        return _refuse(state, "the saga is already compensating; resume it instead")
    past_pivot = any(s.status is StepStatus.DONE for s in state.steps[definition.pivot_index :])
    if past_pivot:
        return _refuse(state, "the saga has passed its pivot; it can only go forward")
    i = state.current
    new = state
    if state.steps[i].status is StepStatus.PENDING:
        # The attempt in flight, if any, will find the saga compensating and do nothing.
        new = new.with_step(i, status=StepStatus.FAILED, waiting_since=None)
    reason = f"compensation requested by {event.actor}: {event.why}"
    t = _compensate_from(replace(new, reason=reason), i - 1)
    return replace(t, note=reason)


def awaited_command(state: SagaState) -> Command | None:
    """The command the saga waits for now, or None when it waits for none.

    A running saga waits for its current step's current attempt, a compensating one
    for its current step's current compensation attempt; a saga in any other status
    (or whose current step is not in that condition) waits for nothing. The one
    answer the step handler, the chain executor, the watcher and the sweeper share.
    """
    if not 0 <= state.current < len(state.steps):
        return None
    current = state.steps[state.current]
    command: Command
    if state.status is SagaStatus.RUNNING:
        command = RunStep(current.name, current.attempts)
    elif state.status is SagaStatus.COMPENSATING:
        command = RunCompensation(current.name, current.compensation_attempts)
    else:
        return None
    return command if why_not_awaited(state, command) is None else None


def why_not_awaited(state: SagaState, command: Command) -> str | None:
    """Why the saga does not await `command` now (for the log), or None if it does.

    Checked before a step's action runs, under the saga's row lock, so a stale or
    duplicated message never runs an action a second time.
    """
    if isinstance(command, RunStep):
        return _expecting_step(state, command.step, command.attempt)
    return _expecting_compensation(state, command.step, command.attempt)


def awaits(state: SagaState, command: Command) -> bool:
    """Whether the saga awaits `command` (its step and attempt) now."""
    return why_not_awaited(state, command) is None
