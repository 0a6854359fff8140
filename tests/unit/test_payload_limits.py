"""The request-body checks of the enqueue API (saga.entrypoints.http.limits), without a server."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from saga.entrypoints.http.limits import (
    BodyRejected,
    PayloadLimits,
    check_value,
    exceeds_depth,
    json_depth,
    parse_body,
)

LIMITS = PayloadLimits(max_bytes=1024, max_depth=4)


def nested(levels: int) -> Any:
    value: Any = 1
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"1", 0),
        (b'"[[[["', 0),
        (b"{}", 1),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b"[[], [], [[]], []]", 3),
        (b'{"a": "}}}]]] {{{[[[", "b": {}}', 2),
        (b'{"a\\"[[[": [1]}', 2),
        (b'["\\\\", [[]]]', 3),
    ],
)
def test_depth_is_counted_on_the_raw_bytes(raw: bytes, depth: int) -> None:
    assert exceeds_depth(raw, depth - 1 if depth else 0) is (depth > 0)
    assert exceeds_depth(raw, depth) is False
    if raw not in (b"1",) and not raw.startswith(b'"'):
        assert json_depth(json.loads(raw)) == depth


def test_depth_of_a_parsed_value_matches_the_byte_scan() -> None:
    for levels in range(8):
        value = nested(levels)
        raw = json.dumps(value).encode()
        assert json_depth(value) == levels
        assert exceeds_depth(raw, levels) is False
        assert exceeds_depth(raw, levels - 1) is (levels > 0)


def test_very_deep_input_is_refused_without_parsing_it() -> None:
    # json.loads would raise RecursionError long before this depth.
    raw = b"[" * 500_000 + b"]" * 500_000
    started = time.perf_counter()
    with pytest.raises(BodyRejected) as err:
        parse_body(raw, PayloadLimits(max_bytes=2_000_000, max_depth=16))
    assert err.value.status == 413
    assert err.value.code == "payload_too_deep"
    assert time.perf_counter() - started < 0.5


def test_unterminated_strings_do_not_make_the_scan_quadratic() -> None:
    # Every quote here starts a string that never closes; a backtracking pattern
    # would rescan the rest of the body from each one.
    raw = b'"' + b'\\"' * 100_000
    started = time.perf_counter()
    assert exceeds_depth(raw, 1) is False
    assert time.perf_counter() - started < 0.5
    with pytest.raises(BodyRejected) as err:
        parse_body(raw, PayloadLimits(max_bytes=1_000_000, max_depth=4))
    assert err.value.code == "malformed_json"


def test_size_limit_counts_bytes_not_characters() -> None:
    limits = PayloadLimits(max_bytes=10, max_depth=4)
    assert parse_body('"éééé"'.encode(), limits) == "éééé"  # 6 characters, 10 bytes
    with pytest.raises(BodyRejected) as err:
        parse_body('"ééééé"'.encode(), limits)  # 7 characters, 12 bytes
    assert err.value.status == 413


def test_size_limit_is_inclusive() -> None:
    limits = PayloadLimits(max_bytes=10, max_depth=4)
    assert parse_body(b'"12345678"', limits) == "12345678"  # exactly 10 bytes
    with pytest.raises(BodyRejected) as err:
        parse_body(b'"123456789"', limits)
    assert (err.value.status, err.value.code) == (413, "payload_too_large")
    assert "10 bytes" in err.value.message


def test_envelope_level_is_not_charged_to_the_payload() -> None:
    body = json.dumps({"saga": "s", "payload": nested(4)}).encode()
    assert parse_body(body, LIMITS, envelope_levels=1)["payload"] == nested(4)
    body = json.dumps({"saga": "s", "payload": nested(5)}).encode()
    with pytest.raises(BodyRejected) as err:
        parse_body(body, LIMITS, envelope_levels=1)
    assert err.value.code == "payload_too_deep"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"\xff\xfe{}", 400, "invalid_utf8"),
        (b'{"a": "\xc3"}', 400, "invalid_utf8"),
        (b"{", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b'{"a": NaN}', 400, "malformed_json"),
        (b'{"a": Infinity}', 400, "malformed_json"),
        (b'{"a": 1, "a": 2}', 400, "malformed_json"),
        (b"{'a': 1}", 400, "malformed_json"),
        (b'{"a": "x\\u0000y"}', 422, "invalid_text"),
        (b'{"a": ["\\ud800"]}', 422, "invalid_text"),
        (b'{"\\u0000": 1}', 422, "invalid_text"),
    ],
)
def test_bodies_that_cannot_be_stored_are_refused(raw: bytes, status: int, code: str) -> None:
    with pytest.raises(BodyRejected) as err:
        parse_body(raw, LIMITS)
    assert (err.value.status, err.value.code) == (status, code)
    assert err.value.message


def test_bad_text_names_the_field() -> None:
    with pytest.raises(BodyRejected) as err:
        parse_body(b'{"payload": {"items": [{"sku": "a\\u0000"}]}}', LIMITS)
    assert err.value.fields == ("payload.items[0].sku",)


def test_valid_body_is_parsed() -> None:
    raw = '{"saga": "order-payment", "payload": {"note": "naïve ✓", "n": [1, 2.5, null]}}'
    assert parse_body(raw.encode(), LIMITS, envelope_levels=1) == {
        "saga": "order-payment",
        "payload": {"note": "naïve ✓", "n": [1, 2.5, None]},
    }


def test_check_value_refuses_what_parse_body_refuses() -> None:
    with pytest.raises(BodyRejected) as err:
        check_value({"a": nested(4)}, LIMITS)
    assert err.value.code == "payload_too_deep"
    with pytest.raises(BodyRejected) as err:
        check_value({"a": "x" * 2000}, LIMITS)
    assert err.value.code == "payload_too_large"
    with pytest.raises(BodyRejected) as err:
        check_value({"a": float("nan")}, LIMITS)
    assert err.value.code == "invalid_payload"
    with pytest.raises(BodyRejected) as err:
        check_value({"a": object()}, LIMITS)
    assert err.value.code == "invalid_payload"
    with pytest.raises(BodyRejected) as err:
        check_value({"a": "\ud800"}, LIMITS)
    assert (err.value.code, err.value.fields) == ("invalid_text", ("a",))
    assert json.loads(check_value({"a": [1, "é"]}, LIMITS)) == {"a": [1, "é"]}


def test_check_value_stops_on_a_value_that_contains_itself() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(BodyRejected) as err:
        check_value(loop, LIMITS)
    assert err.value.code == "payload_too_deep"
