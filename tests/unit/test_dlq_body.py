"""How `saga dlq show` reads a dead letter's body: text, JSON, or bytes (no broker needed)."""

from __future__ import annotations

import base64
import json

from saga.app.dlq import HISTORY, REPLAYS, DeadLetter, hex_dump


def _message(
    body: bytes, encoding: str | None, headers: dict[str, object] | None = None
) -> DeadLetter:
    properties = {"content_type": "application/octet-stream", "content_encoding": encoding}
    return DeadLetter(position=1, body=body, properties=properties, headers=headers or {})


def test_a_json_body_the_worker_labelled_binary_is_read_as_json() -> None:
    # The worker writes content_encoding "binary" when the message had none.
    step = {"message_id": "m-1", "saga_id": "s-1", "saga": "x", "step": "a", "attempt": 2}
    message = _message(json.dumps([[step], {}, None]).encode(), "binary")
    assert message.saga_id == "s-1" and message.summary()["attempt"] == 2
    details = message.details()
    assert details["body"][0][0]["step"] == "a" and details["body_base64"] is None


def test_control_characters_make_a_body_binary_even_if_it_decodes() -> None:
    body = b"\x1b[2Jcleared\x00"
    details = _message(body, "utf-8").details()
    assert details["body"] == f"<{len(body)} bytes, not text: 1b 5b 32 4a 63 6c 65 61 72 65 64 00>"
    assert base64.b64decode(details["body_base64"]) == body
    # Tabs and newlines are text.
    assert _message(b"a\tb\r\nc", "utf-8").details()["body"] == "a\tb\r\nc"


def test_hex_dump_lines_and_what_was_left_out() -> None:
    lines = hex_dump(b"ABCDEFGHIJKLMNOPQR\x00", limit=16)
    assert lines == [
        "00000000  41 42 43 44 45 46 47 48  49 4a 4b 4c 4d 4e 4f 50  |ABCDEFGHIJKLMNOP|",
        "... 3 more byte(s); all of them in --json (body_base64)",
    ]
    assert hex_dump(b"\x00a") == ["00000000  00 61" + " " * 45 + "|.a|"]


def test_history_and_count_come_from_the_headers_and_are_masked() -> None:
    entry = {"reason": "r", "why": "password=hunter2", "replayed_by": "alice"}
    message = _message(b"x", "utf-8", {REPLAYS: 2, HISTORY: [entry, "not a table"]})
    assert message.replays == 2
    (shown,) = message.details()["history"]
    assert shown["replayed_by"] == "alice" and "hunter2" not in shown["why"]
