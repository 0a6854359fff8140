"""The console's credentials, session cookies and CSRF tokens (saga.entrypoints.http.ui)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from saga.config import ConfigError, Settings
from saga.entrypoints.http.ui import csrf
from saga.entrypoints.http.ui.auth import API_LOGIN_NAME, Authenticator, Role, parse_users
from saga.entrypoints.http.ui.passwords import check_password, hash_password

HASH = hash_password("s3cret")


def auth(**settings: object) -> Authenticator:
    values: dict[str, object] = {
        "api_token": "tok",
        "ui_users": f"olga:operator:{HASH},rita:read-only:{HASH}",
        "ui_session_secret": "k" * 32,
    }
    values.update(settings)
    return Authenticator(Settings(**values))  # type: ignore[arg-type]


def test_passwords_are_salted_scrypt_and_checked() -> None:
    assert hash_password("s3cret") != HASH  # a fresh salt each time
    assert check_password("s3cret", HASH)
    assert not check_password("s3cret ", HASH)
    assert not check_password("s3cret", "md5$whatever")
    assert not check_password("s3cret", "scrypt$garbage")


@pytest.mark.parametrize(
    "entry",
    ["olga", "olga:admin:x", "olga:operator:", f":operator:{HASH}", f"api-token:operator:{HASH}"],
)
def test_a_malformed_user_entry_is_refused_with_what_to_do(entry: str) -> None:
    with pytest.raises(ConfigError, match="SAGA_UI_USERS"):
        parse_users(entry)
    if not entry.startswith("api-token"):
        # Already when the settings are read (`saga config`, any command), not at login.
        with pytest.raises(ConfigError, match="make the hash with"):
            Settings.from_env({"SAGA_UI_USERS": entry})


def test_users_and_the_api_token_log_in_with_their_roles() -> None:
    a = auth()
    olga, rita = a.check("olga", "s3cret"), a.check("rita", "s3cret")
    assert olga is not None and olga.role is Role.OPERATOR
    assert rita is not None and rita.role is Role.READ_ONLY
    token = a.check("", "tok")
    assert token is not None and token.name == API_LOGIN_NAME and token.role is Role.OPERATOR
    assert a.check("olga", "wrong") is None
    assert a.check("nobody", "s3cret") is None
    assert a.check("olga", "tok") is None  # the token is not every user's password
    assert not auth(api_token="", ui_users="").configured


def test_a_session_cookie_is_read_back_only_unchanged_unexpired_and_of_a_current_user() -> None:
    a = auth()
    user = a.check("olga", "s3cret")
    assert user is not None
    session = a.login(user)
    cookie = a.sign(session)
    assert a.read(cookie) == session
    body, _, mac = cookie.rpartition(".")
    assert a.read(body + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB")) is None
    forged = a.sign(replace(session, role=Role.OPERATOR, user="rita"))
    assert a.read(forged.split(".")[0] + "." + mac) is None
    assert auth(ui_session_secret="other" * 8).read(cookie) is None
    assert a.read(a.sign(replace(session, expires=time.time() - 1))) is None
    # Removed or demoted in the settings: the session ends at once.
    assert auth(ui_users=f"rita:read-only:{HASH}").read(cookie) is None
    assert auth(ui_users=f"olga:read-only:{HASH}").read(cookie) is None
    assert a.read(None) is None and a.read("garbage") is None


def test_csrf_tokens_are_bound_to_the_session() -> None:
    a = auth()
    one, other = a.anonymous(), a.anonymous()
    token = csrf.token_for(a.secret, one)
    assert csrf.valid(a.secret, one, token)
    assert not csrf.valid(a.secret, other, token)
    assert not csrf.valid(a.secret, one, None)
    assert not csrf.valid(a.secret, one, "")
    assert not csrf.valid(a.secret, None, token)
    # Logging in starts a new session: a token from before it is worthless after.
    user = a.check("olga", "s3cret")
    assert user is not None
    assert not csrf.valid(a.secret, a.login(user), token)


def test_settings_redact_the_secret_and_the_hashes() -> None:
    shown = Settings(ui_users=f"olga:operator:{HASH}", ui_session_secret="k" * 32).redacted()
    assert shown["SAGA_UI_SESSION_SECRET"] == "***"
    assert shown["SAGA_UI_USERS"] == "olga:operator:***"
    assert Settings.from_env({"SAGA_UI_SECURE_COOKIE": "false"}).ui_secure_cookie is False
    with pytest.raises(ConfigError, match="boolean"):
        Settings.from_env({"SAGA_UI_SECURE_COOKIE": "maybe"})
