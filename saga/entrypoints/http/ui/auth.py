"""Who is logged in to the console: users from settings, signed session cookies, roles.

A session is a signed cookie (HMAC-SHA256 over its JSON), not a server-side
record, so every API instance that shares SAGA_UI_SESSION_SECRET knows it and a
restart keeps it. It holds a random session id, the user, the role and its
expiry; the CSRF token is derived from the session id (csrf.py). Logging in
issues a new session id, so a session id planted before the login is worthless.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from saga.config import ConfigError, Settings
from saga.entrypoints.http.ui.passwords import check_password

COOKIE = "saga_console"
API_LOGIN_NAME = "api-token"


class Role(StrEnum):
    OPERATOR = "operator"
    READ_ONLY = "read-only"


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str


def parse_users(text: str) -> dict[str, User]:
    """SAGA_UI_USERS: `name:role:hash` entries separated by commas."""
    users: dict[str, User] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        role, _, password_hash = rest.partition(":")
        if not name or not password_hash or role not in tuple(Role):
            raise ConfigError(
                f"SAGA_UI_USERS entry {name or entry[:20]!r} is not name:role:hash with role "
                "operator or read-only; make the hash with `python -m "
                "saga.entrypoints.http.ui.passwords`"
            )
        if name == API_LOGIN_NAME:
            raise ConfigError(f"SAGA_UI_USERS: the name {API_LOGIN_NAME!r} is the API token's")
        users[name] = User(name, Role(role), password_hash)
    return users


@dataclass(frozen=True)
class Session:
    sid: str
    user: str | None
    role: Role | None
    expires: float

    @property
    def logged_in(self) -> bool:
        return self.user is not None

    @property
    def can_act(self) -> bool:
        return self.role is Role.OPERATOR


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Checks credentials and signs and reads session cookies."""

    def __init__(self, settings: Settings) -> None:
        self.users = parse_users(settings.ui_users)
        self._token = settings.api_token
        # Random when unset: sessions then last as long as this process.
        self.secret = (settings.ui_session_secret or secrets.token_hex(32)).encode()
        self.ttl = settings.ui_session_ttl
        self.secure = settings.ui_secure_cookie

    @property
    def configured(self) -> bool:
        return bool(self._token or self.users)

    def check(self, name: str, password: str) -> User | None:
        """The user these credentials are, or None; the API token logs in as an operator."""
        if (
            self._token
            and hmac.compare_digest(
                hashlib.sha256(password.encode()).digest(),
                hashlib.sha256(self._token.encode()).digest(),
            )
            and name in ("", API_LOGIN_NAME)
        ):
            return User(API_LOGIN_NAME, Role.OPERATOR, "")
        user = self.users.get(name)
        if user is None:
            # The same work as a real check, so timing does not tell which names exist.
            check_password(password, "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAA")
            return None
        return user if check_password(password, user.password_hash) else None

    def anonymous(self) -> Session:
        return Session(secrets.token_urlsafe(18), None, None, time.time() + self.ttl)

    def login(self, user: User) -> Session:
        return Session(secrets.token_urlsafe(18), user.name, user.role, time.time() + self.ttl)

    def sign(self, session: Session) -> str:
        body = _b64(
            json.dumps(
                {"sid": session.sid, "u": session.user, "r": session.role, "e": session.expires},
                separators=(",", ":"),
            ).encode()
        )
        return f"{body}.{_b64(self._mac(body))}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie holds; None if absent, forged, expired or of a removed user."""
        if not cookie or "." not in cookie:
            return None
        body, _, mac = cookie.rpartition(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(body)):
                return None
            data = json.loads(_unb64(body))
            session = Session(
                str(data["sid"]),
                data["u"],
                Role(data["r"]) if data["r"] else None,
                float(data["e"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < time.time():
            return None
        if session.user is not None and session.user != API_LOGIN_NAME:
            user = self.users.get(session.user)
            # A user removed or demoted in the settings loses the session at once.
            if user is None or user.role is not session.role:
                return None
        if session.user == API_LOGIN_NAME and not self._token:
            return None
        return session

    def _mac(self, body: str) -> bytes:
        return hmac.new(self.secret, body.encode(), hashlib.sha256).digest()
