"""The enqueue API over HTTP on the real stores (PostgreSQL and SQLite).

Every refusal is checked twice: the status and error body the caller sees, and
that nothing reached the store (no saga, step, outbox or history row), since
an outbox row is what would later be published.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from saga.core.state import SagaStatus
from tests.support.api import (
    JSON,
    NOTHING,
    PAYMENT,
    Counts,
    Instance,
    assert_error,
    counts,
    instance,
    post,
    start,
)
from tests.support.outbox import drive_outbox

# -- creating -----------------------------------------------------------------------


def test_create_returns_201_with_location_and_stores_one_saga(
    http: TestClient, api: Instance
) -> None:
    r = post(http, start())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] is True and body["saga"] == "order-payment"
    assert r.headers["Location"] == f"/sagas/{body['saga_id']}" == body["status_url"]
    # One saga, its steps, its first step message in the outbox, a "started" note.
    assert counts(api.engine) == Counts(sagas=1, steps=4, outbox=1, history=1)

    got = http.get(r.headers["Location"])
    assert got.status_code == 200
    view = got.json()
    assert view["saga_id"] == body["saga_id"]
    assert view["status"] == "running"
    assert view["idempotency_key"] == "key-1"
    assert view["input"] == {**PAYMENT, "simulate": "none"}


def test_same_key_same_payload_returns_the_same_saga_with_200(
    http: TestClient, api: Instance
) -> None:
    first = post(http, start())
    # Key order and whitespace differ: the payload is the same.
    again = post(
        http,
        json.dumps(
            {"payload": dict(reversed(list(PAYMENT.items()))), "saga": "order-payment"}, indent=2
        ).encode(),
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["saga_id"] == first.json()["saga_id"]
    assert again.json()["created"] is False
    assert again.headers["Location"] == first.headers["Location"]
    assert counts(api.engine).sagas == 1
    assert counts(api.engine).outbox == 1


@pytest.mark.parametrize(
    "second",
    [
        start({**PAYMENT, "amount_cents": 2000}),
        start({**PAYMENT, "simulate": "decline_payment"}),
        start({"note": "hello"}, saga="ping"),
    ],
    ids=["other-amount", "other-field", "other-saga"],
)
def test_same_key_different_request_is_409_naming_the_first_saga(
    http: TestClient, api: Instance, second: dict[str, Any]
) -> None:
    first = post(http, start())
    before = counts(api.engine)
    r = post(http, second)
    body = assert_error(r, 409, "idempotency_conflict")
    assert body["saga_id"] == first.json()["saga_id"]
    assert counts(api.engine) == before


def test_default_values_make_the_same_payload(http: TestClient, api: Instance) -> None:
    # "simulate" defaults to "none": spelled out or left out, it is one request.
    first = post(http, start())
    again = post(http, start({**PAYMENT, "simulate": "none"}))
    assert (first.status_code, again.status_code) == (201, 200)


# -- refusals: nothing stored ---------------------------------------------------------

DEEP: Any = "x"
for _ in range(7):
    DEEP = {"d": DEEP}

REFUSALS: list[tuple[str, dict[str, Any], int, str, list[str] | None]] = [
    (
        "schema: bad values",
        {"body": start({**PAYMENT, "amount_cents": -1, "currency": "euro"})},
        422,
        "invalid_payload",
        ["payload.amount_cents", "payload.currency"],
    ),
    (
        "schema: missing field",
        {"body": start({k: v for k, v in PAYMENT.items() if k != "order_id"})},
        422,
        "invalid_payload",
        ["payload.order_id"],
    ),
    (
        "schema: unknown field",
        {"body": start({**PAYMENT, "tip": 5})},
        422,
        "invalid_payload",
        ["payload.tip"],
    ),
    (
        "schema: wrong type",
        {"body": start({**PAYMENT, "amount_cents": "lots"})},
        422,
        "invalid_payload",
        ["payload.amount_cents"],
    ),
    (
        "schema: a boolean is not a number of cents",
        {"body": start({**PAYMENT, "amount_cents": True})},
        422,
        "invalid_payload",
        ["payload.amount_cents"],
    ),
    (
        "schema: a numeric string is not a number of cents",
        {"body": start({**PAYMENT, "amount_cents": "12"})},
        422,
        "invalid_payload",
        ["payload.amount_cents"],
    ),
    ("envelope: no saga", {"body": {"payload": PAYMENT}}, 422, "invalid_request", ["saga"]),
    (
        "envelope: payload not an object",
        {"body": {"saga": "order-payment", "payload": [1]}},
        422,
        "invalid_request",
        ["payload"],
    ),
    (
        "envelope: extra key",
        {"body": {**start(), "priority": 1}},
        422,
        "invalid_request",
        ["priority"],
    ),
    ("envelope: not an object", {"body": [start()]}, 422, "invalid_request", ["(body)"]),
    ("unknown saga", {"body": start(saga="refund")}, 404, "unknown_saga", ["saga"]),
    (
        "oversize",
        {"body": start({**PAYMENT, "order_id": "x" * 3000})},
        413,
        "payload_too_large",
        None,
    ),
    ("too deep", {"body": start({**PAYMENT, "meta": DEEP})}, 413, "payload_too_deep", None),
    ("malformed JSON", {"body": b'{"saga": "order-payment", '}, 400, "malformed_json", None),
    ("empty body", {"body": b""}, 400, "malformed_json", None),
    (
        "NaN",
        {"body": b'{"saga": "order-payment", "payload": {"x": NaN}}'},
        400,
        "malformed_json",
        None,
    ),
    (
        "duplicate keys",
        {"body": b'{"saga": "order-payment", "saga": "ping", "payload": {}}'},
        400,
        "malformed_json",
        None,
    ),
    (
        "invalid UTF-8",
        {"body": b'{"saga": "order-payment", "payload": {"order_id": "\xc3\x28"}}'},
        400,
        "invalid_utf8",
        None,
    ),
    (
        "NUL in a string",
        {"body": json.dumps(start({**PAYMENT, "order_id": "a\u0000b"})).encode()},
        422,
        "invalid_text",
        ["payload.order_id"],
    ),
    (
        "wrong content type",
        {"body": start(), "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
        None,
    ),
    (
        "form content type",
        {"body": start(), "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
        "unsupported_media_type",
        None,
    ),
    (
        "latin-1 charset",
        {"body": start(), "headers": {"Content-Type": "application/json; charset=latin-1"}},
        415,
        "unsupported_media_type",
        None,
    ),
    ("no key", {"body": start(), "key": None}, 400, "missing_idempotency_key", None),
    ("blank key", {"body": start(), "key": "  "}, 400, "missing_idempotency_key", None),
    ("key too long", {"body": start(), "key": "k" * 201}, 400, "invalid_idempotency_key", None),
]


@pytest.mark.parametrize(
    ("case", "status", "code", "fields"),
    [(r[1], r[2], r[3], r[4]) for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refused_request_stores_and_publishes_nothing(
    http: TestClient,
    api: Instance,
    case: dict[str, Any],
    status: int,
    code: str,
    fields: list[str] | None,
) -> None:
    r = post(http, case["body"], key=case.get("key", "key-1"), **case.get("headers", {}))
    assert_error(r, status, code, fields)
    assert counts(api.engine) == NOTHING
    # The refusal did not use up the key: the same key with a good request works.
    if case.get("key", "key-1") == "key-1":
        assert post(http, start()).status_code == 201


def test_schema_failure_lists_each_field_with_its_message(http: TestClient) -> None:
    r = post(http, start({**PAYMENT, "amount_cents": 0, "currency": "eur"}))
    body = assert_error(r, 422, "invalid_payload")
    by_field = {d["field"]: d["message"] for d in body["details"]}
    assert set(by_field) == {"payload.amount_cents", "payload.currency"}
    assert "greater than 0" in by_field["payload.amount_cents"]
    assert "amount_cents" in body["message"] and "currency" in body["message"]


def test_oversize_is_refused_on_content_length_before_reading(
    http: TestClient, api: Instance
) -> None:
    # The declared length alone decides: the (short) body is never parsed.
    r = http.post(
        "/sagas",
        content=b"{",
        headers={**JSON, "Idempotency-Key": "k", "Content-Length": "999999"},
    )
    assert_error(r, 413, "payload_too_large")
    assert counts(api.engine) == NOTHING


def test_oversize_chunked_body_is_refused_by_bytes_read(http: TestClient, api: Instance) -> None:
    # No Content-Length at all: the limit has to count the bytes as they arrive.
    def chunks() -> Iterator[bytes]:
        yield b'{"saga": "order-payment", "payload": {"order_id": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}}'

    r = http.post("/sagas", content=chunks(), headers={**JSON, "Idempotency-Key": "k"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_error(r, 413, "payload_too_large")
    assert counts(api.engine) == NOTHING


def test_deep_nesting_is_refused_before_parsing(http: TestClient, api: Instance) -> None:
    # Deep enough to crash json.loads with RecursionError if it ever got there.
    body = b'{"saga": "order-payment", "payload": {"x": ' + b"[" * 1000 + b"]" * 1000 + b"}}"
    r = http.post("/sagas", content=body, headers={**JSON, "Idempotency-Key": "k"})
    assert_error(r, 413, "payload_too_deep")
    assert counts(api.engine) == NOTHING


def test_payload_at_the_depth_limit_is_accepted(http: TestClient, api: Instance) -> None:
    # Limit 6: the payload object is level 1, so five more levels fit; the schema
    # then refuses the unknown field, which shows the depth check let it through.
    deep: Any = 1
    for _ in range(5):
        deep = [deep]
    r = post(http, start({**PAYMENT, "meta": deep}))
    assert_error(r, 422, "invalid_payload", ["payload.meta"])
    deep = [deep]
    assert_error(post(http, start({**PAYMENT, "meta": deep})), 413, "payload_too_deep")


def test_json_with_a_json_suffix_and_utf8_charset_is_accepted(http: TestClient) -> None:
    assert (
        post(http, start(), **{"Content-Type": "application/json; charset=UTF-8"}).status_code
        == 201
    )
    r = post(http, start(), key="key-2", **{"Content-Type": "application/vnd.saga+json"})
    assert r.status_code == 201


# -- reading ------------------------------------------------------------------------


def test_get_shows_steps_with_attempts_and_last_error_and_history(
    http: TestClient, api: Instance
) -> None:
    r = post(http, start({**PAYMENT, "simulate": "decline_payment"}))
    saga_id = r.json()["saga_id"]
    drive_outbox(api.orchestrator, api.engine)

    view = http.get(f"/sagas/{saga_id}").json()
    assert view["status"] == SagaStatus.COMPENSATED
    steps = {s["name"]: s for s in view["steps"]}
    assert [s["name"] for s in view["steps"]] == [
        "reserve_funds",
        "record_payment",
        "confirm_order",
        "notify_customer",
    ]
    assert steps["reserve_funds"]["status"] == "compensated"
    assert steps["reserve_funds"]["attempts"] == 1
    assert steps["record_payment"]["status"] == "failed"
    assert steps["record_payment"]["attempts"] == 1
    assert "declined" in steps["record_payment"]["last_error"]
    assert steps["confirm_order"]["attempts"] == 0
    kinds = [h["kind"] for h in view["history"]]
    assert kinds[0] == "started"
    assert "step failed" in kinds and "compensation succeeded" in kinds
    assert kinds[-1] == "saga compensated"
    assert view["data"]["reserve_funds"] == {"reserved_cents": PAYMENT["amount_cents"]}


@pytest.mark.parametrize(
    "saga_id",
    ["00000000-0000-0000-0000-000000000001", "nope", "x" * 300, "a%00b", "%E2%9C%93"],
)
def test_get_unknown_id_is_404(http: TestClient, saga_id: str) -> None:
    assert_error(http.get(f"/sagas/{saga_id}"), 404, "saga_not_found")


def test_unknown_route_and_method_use_the_error_body(http: TestClient) -> None:
    assert_error(http.get("/nowhere"), 404, "not_found")
    assert_error(http.delete("/sagas/x"), 405, "method_not_allowed")


def test_healthz_reports_the_store(http: TestClient) -> None:
    r = http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "store": "reachable"}


def test_healthz_is_503_when_the_store_is_unreachable() -> None:
    # Nothing listens on port 1: the connection is refused at once.
    down = instance("postgresql://postgres@127.0.0.1:1/test")
    with TestClient(down.app, raise_server_exceptions=False) as client:
        r = client.get("/healthz")
        assert r.status_code == 503
        assert r.json()["status"] == "unavailable"
        enqueue = post(client, start())
        assert_error(enqueue, 503, "store_unavailable")
        assert enqueue.headers["Retry-After"]
    down.engine.dispose()


# -- auth and docs ------------------------------------------------------------------


@pytest.fixture
def secured(sqlite_url: str) -> Iterator[Instance]:
    inst = instance(sqlite_url, api_token="s3cret-token")
    yield inst
    inst.engine.dispose()


def test_token_is_required_on_every_route_but_healthz(secured: Instance) -> None:
    with TestClient(secured.app) as client:
        for method, path in [
            ("POST", "/sagas"),
            ("GET", "/sagas/x"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("GET", "/nowhere"),
        ]:
            r = client.request(
                method, path, content=json.dumps(start()), headers={**JSON, "Idempotency-Key": "k"}
            )
            body = assert_error(r, 401, "unauthorized")
            assert "Bearer" in body["message"]
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        for wrong in [
            "Bearer s3cret-tokeN",
            "Bearer s3cret-token2",
            "Basic s3cret-token",
            "s3cret-token",
            "Bearer",
        ]:
            r = post(client, start(), Authorization=wrong)
            assert_error(r, 401, "unauthorized")
        assert counts(secured.engine) == NOTHING

        assert client.get("/healthz").status_code == 200
        good = {"Authorization": "Bearer s3cret-token"}
        r = post(client, start(), **good)
        assert r.status_code == 201
        assert client.get(r.headers["Location"], headers=good).status_code == 200
        assert client.get("/openapi.json", headers=good).status_code == 200
        # The scheme name is case-insensitive (RFC 7235).
        assert post(client, start(), **{"Authorization": "bearer s3cret-token"}).status_code == 200


def test_without_a_token_configured_no_header_is_needed(http: TestClient) -> None:
    assert post(http, start()).status_code == 201
    assert post(http, start(), Authorization="Bearer anything").status_code == 200


def test_auth_is_checked_before_the_body_is_read(secured: Instance) -> None:
    with TestClient(secured.app) as client:
        r = client.post("/sagas", content=b"[" * 100_000, headers={**JSON, "Idempotency-Key": "k"})
        assert_error(r, 401, "unauthorized")


def test_openapi_documents_the_enqueue_contract(http: TestClient) -> None:
    spec = http.get("/openapi.json").json()
    post_op = spec["paths"]["/sagas"]["post"]
    assert "Idempotency-Key" in spec["info"]["description"]
    params = {p["name"]: p for p in post_op["parameters"]}
    assert params["Idempotency-Key"]["in"] == "header"
    schema = post_op["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"saga", "payload"}
    assert {"200", "201", "400", "401", "404", "409", "413", "415", "422", "503"} <= set(
        post_op["responses"]
    )
    assert "get" in spec["paths"]["/sagas/{saga_id}"]
    assert "get" in spec["paths"]["/healthz"]
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
