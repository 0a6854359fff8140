"""GET/POST /ui/login and POST /ui/logout."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from saga.entrypoints.http.ui import csrf
from saga.entrypoints.http.ui.console import PREFIX, Console, Refused, read_form


def _safe_next(target: str | None) -> str:
    # Only a path of the console: never an open redirect to another site.
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return PREFIX + "/"


def routes(console: Console) -> APIRouter:
    router = APIRouter()

    @router.get("/login")
    def login_form(request: Request, next: str | None = None) -> Response:
        session = console.session(request)
        if session is not None and session.logged_in:
            return console.redirect(_safe_next(next))
        return console.render(
            request,
            "login.html",
            {"next": _safe_next(next), "error": None, "configured": console.auth.configured},
            session,
        )

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        session = console.session(request)
        token = form.get(csrf.FIELD)
        if not csrf.valid(console.auth.secret, session, token if isinstance(token, str) else None):
            raise Refused(
                "the login form's security token is missing or wrong; nothing was done: "
                "reload the login page and try again",
                session,
            )
        name = str(form.get("username") or "").strip()
        password = str(form.get("password") or "")
        target = _safe_next(str(form.get("next") or ""))
        user = console.auth.check(name, password) if password else None
        if user is None:
            return console.render(
                request,
                "login.html",
                {
                    "next": target,
                    "error": "Wrong name or password (or API token). Nothing else is said on "
                    "purpose.",
                    "configured": console.auth.configured,
                    "username": name,
                },
                session,
                status=401,
            )
        response = console.redirect(target)
        console.set_cookie(response, console.auth.login(user))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        form = await read_form(request)
        console.acting(request, form, act=False)
        response = console.redirect(PREFIX + "/login")
        console.set_cookie(response, console.auth.anonymous())
        return response

    return router
