"""Password hashes for SAGA_UI_USERS: scrypt, salted, in one self-describing string.

python -m saga.entrypoints.http.ui.passwords       # asks for the password twice
-> scrypt$16384$8$1$<salt>$<hash>                   # put it in name:role:<this>
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import sys

_N, _R, _P = 16384, 8, 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether `password` is the one `stored` was made from (constant time in the digest)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def main() -> int:
    first = getpass.getpass("Password to hash: ")
    if not first:
        print("an empty password would let anyone in; give one", file=sys.stderr)
        return 2
    if getpass.getpass("again: ") != first:
        print("the two passwords differ; nothing printed", file=sys.stderr)
        return 2
    print(hash_password(first))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
