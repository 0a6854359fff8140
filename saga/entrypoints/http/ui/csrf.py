"""CSRF tokens: every POST of the console carries one bound to the session.

The token is an HMAC of the session id under the signing key, so it needs no
storage, differs per session (the login page's too: an anonymous session) and
cannot be computed by another site, which can neither read the cookie
(HttpOnly, SameSite=Strict) nor the page. SameSite alone would do in current
browsers; the token also covers older ones and same-site subdomains.
"""

from __future__ import annotations

import hashlib
import hmac

from saga.entrypoints.http.ui.auth import Session

FIELD = "csrf_token"


def token_for(secret: bytes, session: Session) -> str:
    return hmac.new(secret, b"csrf|" + session.sid.encode(), hashlib.sha256).hexdigest()


def valid(secret: bytes, session: Session | None, supplied: str | None) -> bool:
    if session is None or not supplied:
        return False
    return hmac.compare_digest(token_for(secret, session), supplied)
