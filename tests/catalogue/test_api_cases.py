"""Catalogue: bad input at the HTTP API, the Python client and saga declaration.

Cases the existing API tests already cover word for word are not repeated here:
tests/catalogue/README.md points to them. Every refusal here is checked for
its error code and field, and for an empty store (no saga, step, outbox or
history row).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import pytest

from saga.client import BadRequestError, InvalidPayloadError, LocalSagaClient, SagaClient
from saga.core.definitions import MAX_STEPS, SagaDefinition, Step
from saga.core.errors import DefinitionError
from tests.support.api import (
    NOTHING,
    PAYMENT,
    Instance,
    Ping,
    assert_error,
    counts,
    post,
    serving,
    start,
)


@pytest.fixture
def served(api: Instance) -> Iterator[str]:
    with serving(api.app) as (server,):
        yield server.url


def test_a_definition_version_in_the_request_is_refused(http: Any, api: Instance) -> None:
    """Case: unknown definition version via the API. The API starts the latest version
    and accepts no version field, so any version (known or not) is an unknown field."""
    r = post(http, {**start(), "version": 99})
    body = assert_error(r, 422, "invalid_request", ["version"])
    assert "version" in body["message"]
    assert counts(api.engine) == NOTHING


@pytest.mark.parametrize("saga", [7, None, ["order-payment"], {"name": "order-payment"}])
def test_a_saga_name_of_the_wrong_type_is_refused(http: Any, api: Instance, saga: Any) -> None:
    """Case: wrong types (the envelope's saga name is not a string)."""
    assert_error(post(http, {"saga": saga, "payload": PAYMENT}), 422, "invalid_request", ["saga"])
    assert counts(api.engine) == NOTHING


def test_an_empty_json_object_names_both_missing_fields(http: Any, api: Instance) -> None:
    """Case: missing fields (the whole envelope)."""
    body = assert_error(post(http, {}), 422, "invalid_request")
    assert sorted(body["fields"]) == ["payload", "saga"]
    assert counts(api.engine) == NOTHING


def test_an_idempotency_key_that_is_not_utf8_is_refused_over_http(
    served: str,
    api: Instance,
) -> None:
    """Case: invalid UTF-8 (in the Idempotency-Key header, over a real socket; the
    in-process test client re-encodes header bytes, so it cannot show this)."""
    r = httpx.post(
        f"{served}/sagas",
        content=json.dumps(start()).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": b"order-\xc3\x28"},
        timeout=10,
    )
    assert_error(r, 400, "invalid_idempotency_key", ["Idempotency-Key"])
    assert counts(api.engine) == NOTHING


def test_invalid_utf8_in_a_json_key_is_refused_over_http(served: str, api: Instance) -> None:
    """Case: invalid UTF-8 (inside an object key, not a value)."""
    raw = b'{"saga": "order-payment", "payload": {"order_\xff": 1}}'
    r = httpx.post(
        f"{served}/sagas",
        content=raw,
        headers={"Content-Type": "application/json", "Idempotency-Key": "k"},
        timeout=10,
    )
    assert_error(r, 400, "invalid_utf8")
    assert counts(api.engine) == NOTHING


# -- the Python client ---------------------------------------------------------------


@pytest.fixture(params=["http", "local"])
def client(request: pytest.FixtureRequest, api: Instance, served: str) -> Iterator[Any]:
    if request.param == "local":
        yield LocalSagaClient(api.orchestrator, api.settings)
        return
    with SagaClient(served, retries=0) as remote:
        yield remote


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({**PAYMENT, "order_id": "bad-\ud800"}, None),
        ({**PAYMENT, "placed": date(2024, 1, 1)}, ["payload"]),
        ({**PAYMENT, "tags": {"a", "b"}}, ["payload"]),
        ({**PAYMENT, 7: "int key"}, None),
    ],
    ids=["lone-surrogate", "date", "set", "non-string-key"],
)
def test_the_client_refuses_a_payload_json_cannot_carry(
    client: Any,
    api: Instance,
    payload: dict[Any, Any],
    fields: list[str] | None,
) -> None:
    """Case: invalid UTF-8 / wrong types, from the Python client: text that cannot be
    UTF-8 and values JSON has no type for are refused before anything is sent or stored."""
    with pytest.raises((InvalidPayloadError, BadRequestError)) as caught:
        client.enqueue("order-payment", payload, idempotency_key="k")
    assert caught.value.code and caught.value.message
    if fields is not None:
        assert caught.value.fields == fields
    assert counts(api.engine) == NOTHING


@pytest.mark.parametrize("payload", [[PAYMENT], "order", 12], ids=["list", "str", "int"])
def test_the_client_refuses_a_payload_that_is_not_an_object(
    client: Any,
    api: Instance,
    payload: Any,
) -> None:
    """Case: wrong types, from the Python client (the payload is not a JSON object)."""
    with pytest.raises(InvalidPayloadError) as caught:
        client.enqueue("order-payment", payload, idempotency_key="k")
    assert caught.value.fields == ["payload"]
    assert counts(api.engine) == NOTHING


# -- a huge number of steps ------------------------------------------------------------


def _noop(ctx: Any) -> None:
    return None


def test_a_saga_with_thousands_of_steps_is_refused_when_declared() -> None:
    """Case: a huge number of steps. Refused at declaration, naming the count and the
    limit: every step message rewrites the whole saga state, so thousands of steps cost
    O(steps^2) in the store (see saga/core/definitions.py)."""
    started = time.monotonic()
    with pytest.raises(DefinitionError) as caught:
        SagaDefinition(
            name="huge",
            version=1,
            input_model=Ping,
            steps=tuple(Step(f"s{i}", _noop) for i in range(5000)),
        )
    assert time.monotonic() - started < 5
    assert "5000 steps" in str(caught.value) and str(MAX_STEPS) in str(caught.value)
    # The limit itself is a saga that works.
    at_limit = SagaDefinition(
        name="wide",
        version=1,
        input_model=Ping,
        steps=tuple(Step(f"s{i}", _noop) for i in range(MAX_STEPS)),
    )
    assert len(at_limit.steps) == MAX_STEPS
