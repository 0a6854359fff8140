"""The Python clients: SagaClient over real HTTP (uvicorn, a scripted load
balancer in front of two instances) and LocalSagaClient in process; both give
the same answers and raise the same errors for the same inputs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from saga.client import (
    BadRequestError,
    IdempotencyConflictError,
    InvalidPayloadError,
    LocalSagaClient,
    PayloadTooLargeError,
    SagaClient,
    SagaClientError,
    SagaClientProtocol,
    SagaNotFoundError,
    ServiceUnavailableError,
    UnauthorizedError,
    UnknownSagaError,
)
from tests.support.api import (
    PAYMENT,
    Balancer,
    Instance,
    counts,
    instance,
    serving,
)
from tests.support.ports import free_port

TOKEN = "client-test-token"


def no_sleep(_: float) -> None:
    pass


@pytest.fixture
def pair(store_url: str) -> Iterator[tuple[Instance, Instance]]:
    a = instance(store_url, api_token=TOKEN, max_payload_bytes=4096, max_payload_depth=5)
    b = instance(store_url, api_token=TOKEN, max_payload_bytes=4096, max_payload_depth=5)
    yield a, b
    a.engine.dispose()
    b.engine.dispose()


@pytest.fixture
def balancer(pair: tuple[Instance, Instance]) -> Iterator[Balancer]:
    with serving(pair[0].app, pair[1].app) as servers:
        lb = Balancer([s.url for s in servers])
        yield lb
        lb.close()


# -- retries through a load balancer ---------------------------------------------------


def test_retry_after_a_lost_response_lands_on_the_other_instance_and_gets_the_same_saga(
    pair: tuple[Instance, Instance], balancer: Balancer
) -> None:
    # The first request reaches instance A, which starts the saga; the balancer
    # then drops the connection, so the caller never learns the id. The retry
    # goes round-robin to instance B, which must answer with A's saga.
    balancer.script = ["drop"]
    with SagaClient(balancer.url, token=TOKEN, sleep=no_sleep) as client:
        result = client.start("order-payment", PAYMENT, idempotency_key="order-1001")
        assert client.attempts == 2
    assert [backend for backend, _ in balancer.seen] == list(balancer.backends)
    assert result.created is False  # B found the saga A had created
    assert counts(pair[0].engine).sagas == 1
    with SagaClient(balancer.url, token=TOKEN) as client:
        assert client.get(result.saga_id).status == "running"


def test_retry_after_5xx_then_success(pair: tuple[Instance, Instance], balancer: Balancer) -> None:
    balancer.script = ["503", "503"]
    delays: list[float] = []
    with SagaClient(balancer.url, token=TOKEN, backoff=0.1, sleep=delays.append) as client:
        saga_id = client.enqueue("order-payment", PAYMENT, idempotency_key="k-503")
        assert client.attempts == 3
    assert len(delays) == 2 and 0 < delays[0] <= 0.1 and 0 < delays[1] <= 0.2
    assert [action for _, action in balancer.seen] == ["503", "503", "pass"]
    assert counts(pair[0].engine).sagas == 1
    with SagaClient(balancer.url, token=TOKEN) as client:
        assert client.get(saga_id).saga_id == saga_id


def test_gives_up_after_its_retries_with_a_clear_error(
    pair: tuple[Instance, Instance], balancer: Balancer
) -> None:
    balancer.script = ["503"] * 3
    with SagaClient(balancer.url, token=TOKEN, retries=2, sleep=no_sleep) as client:
        with pytest.raises(ServiceUnavailableError) as err:
            client.enqueue("order-payment", PAYMENT, idempotency_key="k")
        assert client.attempts == 3
    assert "same idempotency key" in str(err.value)
    assert "503" in str(err.value)
    assert counts(pair[0].engine).sagas == 0


def test_connection_refused_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with SagaClient(url, retries=3, sleep=no_sleep) as client:
        with pytest.raises(ServiceUnavailableError) as err:
            client.enqueue("order-payment", PAYMENT, idempotency_key="k")
        assert client.attempts == 4
        assert "ConnectError" in str(err.value)
        assert client.health() is False


def test_client_errors_are_not_retried(balancer: Balancer) -> None:
    with SagaClient(balancer.url, token=TOKEN, sleep=no_sleep) as client:
        with pytest.raises(UnknownSagaError):
            client.enqueue("refund", PAYMENT, idempotency_key="k")
        assert client.attempts == 1


def test_wrong_token_is_unauthorized(balancer: Balancer) -> None:
    with SagaClient(balancer.url, token="wrong") as client:
        with pytest.raises(UnauthorizedError) as err:
            client.enqueue("order-payment", PAYMENT, idempotency_key="k")
        assert err.value.status == 401
        assert client.health() is True  # /healthz needs no token


# -- the same answers in and out of process ----------------------------------------------

DEEP: Any = 1
for _ in range(6):
    DEEP = [DEEP]

CASES: list[tuple[str, str, Any, str, type[SagaClientError], list[str] | None]] = [
    ("unknown saga", "refund", PAYMENT, "k1", UnknownSagaError, ["saga"]),
    (
        "schema",
        "order-payment",
        {**PAYMENT, "amount_cents": 0, "currency": "eu"},
        "k1",
        InvalidPayloadError,
        ["payload.amount_cents", "payload.currency"],
    ),
    (
        "oversize",
        "order-payment",
        {**PAYMENT, "order_id": "x" * 5000},
        "k1",
        PayloadTooLargeError,
        None,
    ),
    ("too deep", "order-payment", {**PAYMENT, "meta": DEEP}, "k1", PayloadTooLargeError, None),
    (
        "NUL",
        "order-payment",
        {**PAYMENT, "order_id": "a\x00"},
        "k1",
        InvalidPayloadError,
        ["payload.order_id"],
    ),
    (
        "NaN",
        "order-payment",
        {**PAYMENT, "amount_cents": float("nan")},
        "k1",
        InvalidPayloadError,
        ["payload"],
    ),
    ("bad key", "order-payment", PAYMENT, "k" * 201, BadRequestError, ["Idempotency-Key"]),
    ("no key", "order-payment", PAYMENT, "", BadRequestError, ["Idempotency-Key"]),
    ("newline in key", "order-payment", PAYMENT, "a\nb", BadRequestError, ["Idempotency-Key"]),
]


@pytest.fixture(params=["http", "local"])
def client(
    request: pytest.FixtureRequest, pair: tuple[Instance, Instance], balancer: Balancer
) -> Iterator[SagaClientProtocol]:
    if request.param == "local":
        yield LocalSagaClient(pair[0].orchestrator, pair[0].settings)
        return
    with SagaClient(balancer.url, token=TOKEN, sleep=no_sleep) as http:
        yield http


@pytest.mark.parametrize(
    ("saga", "payload", "key", "error", "fields"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_refusals_raise_the_same_typed_errors(
    client: SagaClientProtocol,
    pair: tuple[Instance, Instance],
    saga: str,
    payload: Any,
    key: str,
    error: type[SagaClientError],
    fields: list[str] | None,
) -> None:
    with pytest.raises(error) as err:
        client.enqueue(saga, payload, idempotency_key=key)
    assert type(err.value) is error
    assert err.value.message and err.value.code
    if fields is not None:
        assert err.value.fields == fields
    assert counts(pair[0].engine).sagas == 0
    assert counts(pair[0].engine).outbox == 0


def test_enqueue_get_and_conflict(
    client: SagaClientProtocol, pair: tuple[Instance, Instance]
) -> None:
    first = client.start("order-payment", PAYMENT, idempotency_key="order-9")
    assert first.created is True
    assert (
        client.enqueue("order-payment", dict(PAYMENT), idempotency_key="order-9") == first.saga_id
    )
    with pytest.raises(IdempotencyConflictError) as err:
        client.enqueue("order-payment", {**PAYMENT, "amount_cents": 3}, idempotency_key="order-9")
    assert err.value.saga_id == first.saga_id
    view = client.get(first.saga_id)
    assert view.saga == "order-payment" and view.status == "running"
    assert view.steps[0].name == "reserve_funds"
    assert view.history[0].kind == "started"
    with pytest.raises(SagaNotFoundError):
        client.get("00000000-0000-0000-0000-00000000beef")
    assert counts(pair[0].engine).sagas == 1


def test_a_saga_started_locally_is_found_over_http_with_the_same_key(
    pair: tuple[Instance, Instance], balancer: Balancer
) -> None:
    local = LocalSagaClient(pair[0].orchestrator, pair[0].settings)
    # Non-ASCII on purpose: the key must mean the same bytes on both paths.
    key = "bestellung-ü-✓"
    saga_id = local.enqueue("order-payment", PAYMENT, idempotency_key=key)
    with SagaClient(balancer.url, token=TOKEN) as http:
        again = http.start("order-payment", PAYMENT, idempotency_key=key)
    assert (again.saga_id, again.created) == (saga_id, False)
    assert local.get(saga_id).idempotency_key == key


def test_a_body_far_over_the_limit_is_413_not_a_reset(pair: tuple[Instance, Instance]) -> None:
    # The server answers before reading the body; over real HTTP the client must
    # still get the 413 (not a broken pipe it would retry as a network error).
    with serving(pair[0].app) as (server,), SagaClient(server.url, token=TOKEN) as client:
        with pytest.raises(PayloadTooLargeError) as err:
            client.enqueue(
                "order-payment", {**PAYMENT, "order_id": "x" * 2_000_000}, idempotency_key="k"
            )
        assert client.attempts == 1
        assert "4096 bytes" in err.value.message
    assert counts(pair[0].engine).sagas == 0
