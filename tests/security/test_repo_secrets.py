"""Secrets come from the environment or files at run time, never from the repository.

Scans every tracked file. Test keys and certificates are generated at run time
(tests/fabric/client_fixtures.py, tools/saga_devnet/cryptogen.py), so no key material
is tracked at all. Tokens in tests/ are dummies for in-process instances.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
KEY_FILES = re.compile(r"(\.pem|\.key|\.p12|\.pfx|\.jks|(^|/)priv_sk|(^|/)\.env)$")
URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+]*://([^:/@\s]+):([^@/\s]+)@")
ASSIGNED_SECRET = re.compile(
    r"""(?i)\b\w*(password|passwd|secret|token)\w*\s*[:=]\s*["']([^"'$]{4,})["']"""
)
# RabbitMQ's own default user, which RabbitMQ only lets in over loopback: the
# development services of DESIGN.md, not a deployment secret.
LOOPBACK_DEFAULT = ("guest", "guest")


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def test_no_private_key_or_key_file_is_tracked() -> None:
    files = tracked()
    assert len(files) > 100
    assert not [f for f in files if KEY_FILES.search(f)]
    assert not [f for f in files if PEM_PRIVATE.search((ROOT / f).read_bytes())]


def test_no_credentials_outside_the_tests() -> None:
    found = []
    for f in tracked():
        if f.startswith("tests/") or (ROOT / f).suffix in (".png", ".lock"):
            continue
        text = (ROOT / f).read_text(errors="replace")
        for user, password in URL_CREDENTIALS.findall(text):
            # "${X}": compose's variable; "{x}": an f-string's value made at run time.
            if (user, password) != LOOPBACK_DEFAULT and not password.startswith(("${", "{")):
                found.append(f"{f}: credentials in a URL for {user!r}")
        for match in ASSIGNED_SECRET.finditer(text):
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", match.group(2)):
                continue  # the name of the variable the secret is read from
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{f}:{line}: {match.group(0)[:60]}")
    assert not found, "\n".join(found)


def test_compose_takes_every_secret_from_the_environment_and_not_guest() -> None:
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    rabbit = compose["services"]["rabbitmq"]["environment"]
    assert rabbit["RABBITMQ_DEFAULT_USER"] not in ("", "guest")
    assert rabbit["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD:?")
    text = (ROOT / "compose" / "docker-compose.yml").read_text()
    assert "guest" not in text
    env = compose["x-saga-env"]
    # Required (":?"), not defaulted: compose refuses to start without a token.
    assert env["SAGA_API_TOKEN"].startswith("${SAGA_API_TOKEN:?")
    flower = compose["services"]["flower"]["environment"]
    assert flower["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
