"""The operator console: server-rendered pages under /ui of `saga api`.

    app = create_app(orchestrator, settings, console=ConsoleServices.from_container(c))

Pages: overview (/ui/), saga list (/ui/sagas), saga page (/ui/sagas/ID), the
dead-letter queue (/ui/dlq), login. Sessions and roles: auth.py; CSRF: csrf.py;
what it reads and does, built by the composition root: services.py.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from saga.entrypoints.http.ui import actions, dlq_pages, login, pages
from saga.entrypoints.http.ui.console import HERE, PREFIX, Console, NotLoggedIn, Refused
from saga.entrypoints.http.ui.services import ConsoleServices


def mount_console(app: FastAPI, services: ConsoleServices) -> Console:
    console = Console(services)
    app.mount(PREFIX + "/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")
    for module in (login, pages, actions, dlq_pages):
        app.include_router(module.routes(console), prefix=PREFIX, include_in_schema=False)

    @app.exception_handler(NotLoggedIn)
    async def _login_first(request: Request, exc: NotLoggedIn) -> Response:
        return console.login_redirect(exc.target)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        return console.render(
            request, "refused.html", {"message": str(exc)}, exc.session, status=403
        )

    return console


__all__ = ["PREFIX", "ConsoleServices", "mount_console"]
