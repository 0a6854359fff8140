"""The console's shared machinery: templates, the session of a request, refusals.

Pages call `console.page(request)` for the logged-in session (a redirect to the
login page otherwise) and `console.acting(request, form)` before any action: a
session of the operator role and the form's CSRF token, else a 403 and nothing
done.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from saga.entrypoints.http.ui import csrf
from saga.entrypoints.http.ui.auth import COOKIE, Authenticator, Session
from saga.entrypoints.http.ui.services import ConsoleServices

PREFIX = "/ui"
HERE = Path(__file__).parent
# No framing (an action button under another site's overlay), scripts only from the
# console itself, nothing cached (pages show sagas' inputs).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


class NotLoggedIn(Exception):
    def __init__(self, target: str) -> None:
        self.target = target


class Refused(Exception):
    """A request the console will not act on: answered 403 with `message`."""

    def __init__(self, message: str, session: Session | None) -> None:
        super().__init__(message)
        self.session = session


def ago(value: datetime | str | None, now: datetime | None = None) -> str:
    """'12 s ago', '5 min ago', '3 h ago', '2 d ago'."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = max(0.0, ((now or datetime.now(UTC)) - value).total_seconds())
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


def when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Console:
    def __init__(self, services: ConsoleServices) -> None:
        self.services = services
        self.auth = Authenticator(services.settings)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["ago"] = ago
        self.templates.env.filters["when"] = when

    # -- sessions ------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.auth.read(request.cookies.get(COOKIE))

    def page(self, request: Request) -> Session:
        session = self.session(request)
        if session is None or not session.logged_in:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise NotLoggedIn(target)
        return session

    def acting(self, request: Request, form: Mapping[str, Any], *, act: bool = True) -> Session:
        """The session a POST comes from, checked: logged in, CSRF token, operator role."""
        session = self.session(request)
        if session is None or not session.logged_in:
            raise Refused("log in first: this action needs a session", session)
        if not csrf.valid(self.auth.secret, session, _text(form.get(csrf.FIELD))):
            raise Refused(
                "the form's security token is missing or wrong (an old page, or a form sent "
                "from another site); nothing was done: reload the page and try again",
                session,
            )
        if act and not session.can_act:
            raise Refused(
                f"{session.user} has the read-only role: actions need the operator role",
                session,
            )
        return session

    def actor(self, session: Session) -> str:
        return f"{session.user} (console)"

    # -- responses -----------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        session: Session | None,
        *,
        status: int = 200,
    ) -> HTMLResponse:
        fresh = session is None
        session = session or self.auth.anonymous()
        response = self.templates.TemplateResponse(
            request,
            template,
            {
                **context,
                "session": session,
                "csrf_field": csrf.FIELD,
                "csrf_token": csrf.token_for(self.auth.secret, session),
                "prefix": PREFIX,
            },
            status_code=status,
        )
        response.headers.update(SECURITY_HEADERS)
        if fresh:
            self.set_cookie(response, session)
        return response

    def set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            self.auth.sign(session),
            max_age=int(self.auth.ttl),
            path=PREFIX,
            secure=self.auth.secure,
            httponly=True,
            samesite="strict",
        )

    def redirect(self, target: str) -> RedirectResponse:
        return RedirectResponse(target, status_code=303)

    def login_redirect(self, target: str) -> RedirectResponse:
        return self.redirect(f"{PREFIX}/login?next={quote(target, safe='')}")


_MAX_FORM = 16 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form (every console form is one), first value of each field.

    Parsed here rather than by python-multipart: no upload is ever taken, and a
    body past the limit is refused before it is all read.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise Refused("the form is larger than any console form; nothing was done", None)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise Refused("the form is not UTF-8; nothing was done", None) from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
