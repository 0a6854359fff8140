"""Private keys and signed envelopes never appear in logs or error messages.

A slice of the system runs with every logger at DEBUG through the product's JSON
formatter: API refusals, and chain sagas through the real devnet and sagafacts
chaincode with faults (a dropped Submit reply, a forced MVCC conflict, a refused
endorsement). All captured output (our logs, error texts, saga history, the
devnet's and the chaincode's logs) is scanned for PEM private key blocks, for the
MSP private key's bytes, and for the envelopes stored in ledger_attempts.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import Engine

from saga.adapters.fabric import crypto
from saga.adapters.sql.tables import ledger_attempts, saga_history, saga_steps
from saga.app.orchestrator import Orchestrator
from saga.logs import JsonFormatter
from tests.support.api import PAYMENT, instance
from tests.support.chain_ledger import payment
from tests.support.ledger import LedgerNet
from tests.support.outbox import drive_outbox

PEM_PRIVATE = "PRIVATE KEY-----"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def forbidden(key_pem: bytes, envelopes: list[bytes]) -> dict[str, str]:
    """name -> text that must not appear anywhere."""
    key = crypto.load_private_key(key_pem)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    body = "".join(key_pem.decode().strip().splitlines()[1:-1])
    out = {
        "key PEM body": body[20:60],
        "key DER (base64)": base64.b64encode(der).decode()[40:80],
        "key scalar (hex)": scalar.hex(),
        "key scalar (base64)": base64.b64encode(scalar).decode(),
    }
    for i, envelope in enumerate(envelopes):
        # A slice from the middle: base64 of a substring depends on its alignment,
        # so three shifted encodings cover every way the bytes could be encoded.
        for shift in range(3):
            chunk = envelope[len(envelope) // 2 + shift : len(envelope) // 2 + shift + 48]
            out[f"envelope {i} (base64/{shift})"] = base64.b64encode(chunk).decode()[4:40]
        out[f"envelope {i} (hex)"] = envelope[len(envelope) // 2 :][:32].hex()
        out[f"envelope {i} (repr)"] = repr(envelope[len(envelope) // 2 :][:24])[2:-1]
    return out


def test_logs_and_errors_hold_no_private_key_or_envelope(
    captured: io.StringIO,
    sagafacts_net: LedgerNet,
    orchestrator: Orchestrator,
    engine: Engine,
    pg_url: str,
) -> None:
    # API refusals.
    api = instance(pg_url, max_payload_bytes=2048)
    with TestClient(api.app) as http:
        for body in (b"{", b'{"saga": "nope", "payload": {}}', b'{"saga": "order-payment"}'):
            http.post(
                "/sagas",
                content=body,
                headers={"Content-Type": "application/json", "Idempotency-Key": "k"},
            )
        http.post(
            "/sagas",
            json={"saga": "order-payment", "payload": {**PAYMENT, "order_id": "x" * 5000}},
            headers={"Idempotency-Key": "k2"},
        )
    api.engine.dispose()

    # Chain sagas through the devnet, with faults.
    devnet = sagafacts_net.devnet
    ids = []
    devnet.set_faults(drop_submit_reply=1)
    ids.append(orchestrator.enqueue("order-payment", payment("leak-1")).saga_id)
    drive_outbox(orchestrator, engine, timeout=90.0)
    devnet.reset_faults()
    devnet.set_faults(force_mvcc_conflict=1)
    ids.append(orchestrator.enqueue("order-payment", payment("leak-2")).saga_id)
    drive_outbox(orchestrator, engine, timeout=90.0)
    devnet.reset_faults()
    devnet.set_faults(refuse_endorsement=["*"])
    ids.append(orchestrator.enqueue("order-payment", payment("leak-3")).saga_id)
    drive_outbox(orchestrator, engine, timeout=90.0)
    devnet.reset_faults()

    with engine.connect() as c:
        envelopes = [bytes(e) for e in c.execute(select(ledger_attempts.c.envelope)).scalars()]
        history = json.dumps([list(r) for r in c.execute(select(saga_history))], default=str)
        steps = json.dumps([list(r) for r in c.execute(select(saga_steps))], default=str)
    assert len(envelopes) >= 3  # the scan has something to look for
    key_pem = (sagafacts_net.msp_dir(1) / "keystore" / "priv_sk").read_bytes()

    logs = captured.getvalue()
    assert "chain step" in logs and '"level": "debug"' in logs  # DEBUG was captured
    outputs = {
        "our logs": logs,
        "saga history": history,
        "saga steps (errors)": steps,
        "devnet log": devnet.log_path.read_text(errors="replace"),
    }
    needles = forbidden(key_pem, envelopes)
    leaks = [
        f"{what} in {where}"
        for where, text in outputs.items()
        for what, needle in needles.items()
        if needle in text
    ]
    leaks += [f"PEM private key in {w}" for w, t in outputs.items() if PEM_PRIVATE in t]
    assert not leaks, leaks
