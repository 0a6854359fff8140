"""The dead-letter queue: list, show, and replay or drop one message with a reason.

Every read is one pass of the `saga dlq` adapter (each message taken and put back
in order), so this page is read when asked for, never polled. Replay and drop go
through the same passes and are recorded as `saga dlq replay/drop` records them:
in the log and on the history of the saga the message names.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from saga.app import dlq
from saga.entrypoints.http.ui.console import PREFIX, Console, read_form

_MAX_WHY = 1000
EFFECTS = {
    "replay": (
        "Replay",
        "The message is published to the step exchange again (confirmed), then removed from "
        "the dead-letter queue. A worker takes it the normal way; if it is still poison it "
        "comes back here with its new reason. Refused after "
        f"{dlq.DEFAULT_MAX_REPLAYS} replays that each came back.",
    ),
    "drop": (
        "Drop",
        "The message is removed from the dead-letter queue for good; its step is not run. "
        "If its saga still waits on it, retry or resume the saga afterwards.",
    ),
}


def routes(console: Console) -> APIRouter:
    router = APIRouter()
    services = console.services

    @router.get("/dlq")
    async def dlq_list(request: Request) -> Response:
        session = console.page(request)
        error = None
        messages: list[dict[str, Any]] = []
        try:
            found = await run_in_threadpool(lambda: services.dead_letters().browse())
            messages = [m.summary() for m in found]
        except dlq.DlqError as exc:
            error = str(exc)
        return console.render(
            request,
            "dlq.html",
            {
                "messages": messages,
                "error": error,
                "queue": services.settings.dead_letter_queue,
                "done": request.query_params.get("done"),
                "count": request.query_params.get("count"),
            },
            session,
        )

    @router.get("/dlq/messages/{message_id}")
    async def dlq_show(request: Request, message_id: str) -> Response:
        session = console.page(request)
        found = await _find(console, message_id)
        if found is None:
            return console.render(
                request,
                "not_found.html",
                {"what": f"No message with id {message_id[:200]!r} in the dead-letter queue."},
                session,
                status=404,
            )
        return console.render(request, "dlq_message.html", {"m": found.details()}, session)

    @router.get("/dlq/confirm/{action}")
    async def dlq_confirm(request: Request, action: str, id: str = "") -> Response:
        session = console.page(request)
        found = await _find(console, id) if action in EFFECTS else None
        if found is None:
            return console.render(
                request,
                "not_found.html",
                {"what": "No such message or action."},
                session,
                status=404,
            )
        title, effect = EFFECTS[action]
        return console.render(
            request,
            "confirm.html",
            {
                "title": f"{title} dead letter {found.message_id}?",
                "effect": effect,
                "subject": None,
                "message": found.summary(),
                "action_url": f"{PREFIX}/dlq/{action}",
                "cancel_url": f"{PREFIX}/dlq",
                "button": title,
                "hidden": {"id": found.message_id},
                "error": None,
            },
            session,
        )

    @router.post("/dlq/{action}")
    async def dlq_act(request: Request, action: str) -> Response:
        form = await read_form(request)
        session = console.acting(request, form)
        message_id = str(form.get("id") or "")
        why = str(form.get("why") or "").strip()[:_MAX_WHY]
        if action not in EFFECTS or not message_id:
            return console.render(
                request, "not_found.html", {"what": "No such action."}, session, status=404
            )
        if not why:
            return console.redirect(f"{PREFIX}/dlq/confirm/{action}?id={message_id}")
        actor = console.actor(session)
        selection = dlq.Selection(ids=frozenset({message_id}))

        def run() -> dlq.PassResult:
            letters = services.dead_letters()
            if action == "replay":
                return letters.replay(selection, replayer=dlq.Replayer(actor=actor, why=why))
            return letters.drop(selection)

        try:
            result = await run_in_threadpool(run)
        except dlq.DlqError as exc:
            return console.render(
                request, "not_found.html", {"what": f"Nothing done: {exc}"}, session, status=503
            )
        kind = dlq.Action.REPLAY if action == "replay" else dlq.Action.DROP
        done = result.replayed if kind is dlq.Action.REPLAY else result.dropped
        orchestrator = services.orchestrator
        await run_in_threadpool(
            dlq.record,
            done,
            kind,
            actor=actor,
            why=why,
            queue=services.settings.dead_letter_queue,
            note=lambda saga_id, k, detail: orchestrator.note(saga_id, k, detail, actor=actor),
        )
        verb = "replayed" if kind is dlq.Action.REPLAY else "dropped"
        if result.refused:
            verb = "refused"
        return console.redirect(f"{PREFIX}/dlq?done={verb}&count={len(done)}")

    return router


async def _find(console: Console, message_id: str) -> dlq.DeadLetter | None:
    if not message_id or len(message_id) > 200:
        return None
    try:
        return await run_in_threadpool(
            lambda: console.services.dead_letters().find(message_id=message_id)
        )
    except dlq.DlqError:
        return None
