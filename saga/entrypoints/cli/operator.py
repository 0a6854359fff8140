"""`saga retry`, `saga resume`, `saga compensate`: an operator moves one saga on.

Each is recorded on the saga's history (who, when, why) in the same transaction
as its effect, and refused with the reason when it does not apply.
"""

from __future__ import annotations

from typing import Annotated

import typer

from saga.entrypoints.cli._common import (
    REFUSED,
    ActorOpt,
    DbOpt,
    JsonOpt,
    WhyOpt,
    actor_name,
    container,
    fail,
    out,
    print_json,
    require_why,
    settings,
)

SagaIdArg = Annotated[str, typer.Argument(help="Saga id (see `saga list`).")]

_HINTS = {
    "retry": "`saga show ID` says where it stands; a failed saga is resumed, not retried",
    "resume": "only a failed saga can be resumed; a running one can be retried (`saga retry`)",
    "compensate": "`saga show ID` shows the steps; past the pivot a saga only goes forward",
}
# A refusal of `compensate` has several causes; the hint follows the one given (the
# first fragment of the refusal's text that matches), else the general one above.
_COMPENSATE_HINTS = (
    (
        "may still commit",
        "look each transaction up with `saga ledger tx TXID`: `saga resume ID` lets the step "
        "verify them and settle (a VALID one completes it, a pending one is resubmitted "
        "unchanged); compensate once none can commit any more",
    ),
    ("already compensating", "`saga resume ID` retries the compensation that failed"),
    ("passed its pivot", "past the pivot a saga only goes forward: `saga resume ID`"),
    (
        "cannot be compensated",
        "`saga show ID` says where it stands: nothing is left to compensate in a saga that "
        "ended; a running or failed one can be",
    ),
)


def refusal_hint(kind: str, refusal: Exception) -> str:
    """What to do next about a refused operator action, fitting its reason."""
    from saga.app.errors import SagaNotFound

    if isinstance(refusal, SagaNotFound):
        return "`saga list` shows the sagas and their ids"
    if kind == "compensate":
        said = str(refusal)
        for fragment, hint in _COMPENSATE_HINTS:
            if fragment in said:
                return hint
    return _HINTS[kind]


def retry(
    saga_id: SagaIdArg,
    why: WhyOpt,
    actor: ActorOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-drive the current step of a running or compensating saga now.

    Writes one step message for the attempt in progress to the outbox; the relay
    publishes it and a worker takes the normal path: a chain step first verifies
    every transaction it recorded (never a blind resubmission), a local step runs
    only if that attempt is still awaited. Use it when a message was lost or
    dead-lettered and the saga waits; use `resume` for a failed saga.
    """
    from saga.app.errors import OperatorActionRefused, SagaNotFound

    reason = require_why(why)
    who = actor_name(actor)
    try:
        message = container(settings(db)).orchestrator().retry(saga_id, actor=who, why=reason)
    except (SagaNotFound, OperatorActionRefused) as exc:
        fail(REFUSED, f"{saga_id}: {exc}", refusal_hint("retry", exc))
    result = {
        "id": saga_id,
        "action": "retry",
        "step": message.step,
        "phase": str(message.phase),
        "attempt": message.attempt,
        "message_id": message.message_id,
        "actor": who,
        "why": reason,
    }
    if as_json:
        print_json(result)
        return
    what = "compensation of" if message.phase == "undo" else "step"
    out.print(
        f"{saga_id}: {what} {message.step!r} attempt {message.attempt} re-driven "
        f"(message {message.message_id}; recorded: retry by {who}: {reason})",
        highlight=False,
        soft_wrap=True,
    )


def _operator_action(kind: str, saga_id: str, why: str, actor: str | None, db: str | None) -> None:
    from saga.app.errors import OperatorActionRefused, SagaNotFound

    reason = require_why(why)
    who = actor_name(actor)
    orchestrator = container(settings(db)).orchestrator()
    action = orchestrator.resume if kind == "resume" else orchestrator.compensate
    try:
        state = action(saga_id, actor=who, why=reason)
    except (SagaNotFound, OperatorActionRefused) as exc:
        fail(REFUSED, f"{saga_id}: {exc}", refusal_hint(kind, exc))
    out.print(
        f"{saga_id}: {state.status} (recorded: {kind} by {who}: {reason})",
        highlight=False,
        soft_wrap=True,
    )


def resume(saga_id: SagaIdArg, why: WhyOpt, actor: ActorOpt = None, db: DbOpt = None) -> None:
    """Retry the failed step or compensation of a FAILED saga, with a fresh budget."""
    _operator_action("resume", saga_id, why, actor, db)


def compensate(saga_id: SagaIdArg, why: WhyOpt, actor: ActorOpt = None, db: DbOpt = None) -> None:
    """Abandon a saga that has not passed its pivot and undo its completed steps."""
    _operator_action("compensate", saga_id, why, actor, db)
