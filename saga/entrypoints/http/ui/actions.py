"""Operator actions on a saga: a confirmation page, then a POST through the operator
service `saga resume`, `saga compensate` and `saga retry` use (recorded with the
actor and the reason in the same transaction as the effect)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from saga.app.errors import OperatorActionRefused, SagaNotFound
from saga.entrypoints.http.ui.console import PREFIX, Console, read_form
from saga.entrypoints.http.ui.pages import _durations, _view

# What each action will do, said on its confirmation page.
EFFECTS = {
    "resume": (
        "Resume",
        "The failed step (or compensation) is tried again with a fresh retry budget. A chain "
        "step first verifies every transaction it recorded: a VALID one completes it, a "
        "pending one is resubmitted unchanged; nothing is submitted twice.",
    ),
    "compensate": (
        "Compensate",
        "The saga is abandoned and its completed steps are undone in reverse order. Refused "
        "past the pivot, and while a chain step has a transaction that may still commit.",
    ),
    "retry": (
        "Retry now",
        "The current attempt of the running step (or compensation) is driven again now, "
        "through a worker: a local step runs only if that attempt is still awaited, a chain "
        "step verifies its transactions before anything is submitted.",
    ),
}
_MAX_WHY = 1000


def routes(console: Console) -> APIRouter:
    router = APIRouter()
    orchestrator = console.services.orchestrator

    @router.get("/sagas/{saga_id}/confirm/{action}")
    async def confirm(request: Request, saga_id: str, action: str) -> Response:
        session = console.page(request)
        if action not in EFFECTS:
            return console.render(
                request, "not_found.html", {"what": f"No action {action!r}."}, session, status=404
            )
        try:
            view = await run_in_threadpool(_view, console, saga_id)
        except SagaNotFound:
            return console.render(
                request, "not_found.html", {"what": "No such saga."}, session, status=404
            )
        title, effect = EFFECTS[action]
        return console.render(
            request,
            "confirm.html",
            {
                "title": f"{title} saga {view['id']}?",
                "effect": effect,
                "subject": view,
                "action_url": f"{PREFIX}/sagas/{saga_id}/{action}",
                "cancel_url": f"{PREFIX}/sagas/{saga_id}",
                "button": title,
                "hidden": {},
                "error": None,
            },
            session,
        )

    @router.post("/sagas/{saga_id}/{action}")
    async def act(request: Request, saga_id: str, action: str) -> Response:
        form = await read_form(request)
        session = console.acting(request, form)
        if action not in EFFECTS:
            return console.render(
                request, "not_found.html", {"what": f"No action {action!r}."}, session, status=404
            )
        why = str(form.get("why") or "").strip()[:_MAX_WHY]
        if not why:
            return await _again(
                request,
                console,
                session,
                saga_id,
                action,
                "Say why: the reason is recorded with your name.",
            )
        run = {
            "resume": orchestrator.resume,
            "compensate": orchestrator.compensate,
            "retry": orchestrator.retry,
        }[action]
        try:
            await run_in_threadpool(run, saga_id, actor=console.actor(session), why=why)
        except (OperatorActionRefused, SagaNotFound) as exc:
            return await _again(request, console, session, saga_id, action, f"Refused: {exc}")
        return console.redirect(f"{PREFIX}/sagas/{saga_id}?done={action}")

    return router


async def _again(
    request: Request, console: Console, session: Any, saga_id: str, action: str, error: str
) -> Response:
    """The saga page again with the refusal said at the top (409: nothing was done)."""
    try:
        view = await run_in_threadpool(_view, console, saga_id)
    except SagaNotFound:
        return console.render(
            request, "not_found.html", {"what": "No such saga."}, session, status=404
        )
    return console.render(
        request,
        "saga.html",
        {
            "saga": view,
            "ledger": None,
            "ledger_configured": console.services.ledger is not None,
            "done": None,
            "error": error,
            "durations": _durations(view),
        },
        session,
        status=409,
    )
