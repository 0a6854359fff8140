"""The idempotency key is the caller's: any API instance over the same database
answers a repeated key with the saga the first request started.

Two instances here are two `create_app` calls, each with its own engine and
orchestrator (as two servers behind a load balancer would have), over one store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support.api import (
    PAYMENT,
    Instance,
    counts,
    instance,
    run_threads,
    serving,
)

HEADERS = {"Content-Type": "application/json"}
BODY = json.dumps({"saga": "order-payment", "payload": PAYMENT})


@pytest.fixture
def pair(store_url: str) -> Iterator[tuple[Instance, Instance]]:
    a, b = instance(store_url), instance(store_url)
    yield a, b
    a.engine.dispose()
    b.engine.dispose()


def test_second_instance_returns_the_saga_the_first_started(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    with TestClient(a.app) as ca, TestClient(b.app) as cb:
        first = ca.post("/sagas", content=BODY, headers={**HEADERS, "Idempotency-Key": "order-7"})
        again = cb.post("/sagas", content=BODY, headers={**HEADERS, "Idempotency-Key": "order-7"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["saga_id"] == first.json()["saga_id"]
        other = json.dumps({"saga": "order-payment", "payload": {**PAYMENT, "amount_cents": 1}})
        conflict = cb.post(
            "/sagas", content=other, headers={**HEADERS, "Idempotency-Key": "order-7"}
        )
        assert conflict.status_code == 409
        assert conflict.json()["saga_id"] == first.json()["saga_id"]
        # Each instance reads the saga the other one wrote.
        assert cb.get(first.headers["Location"]).json()["saga_id"] == first.json()["saga_id"]
    assert counts(a.engine).sagas == 1
    assert counts(a.engine).outbox == 1


def test_concurrent_requests_on_two_instances_start_one_saga(pg_url: str) -> None:
    """Real servers, real threads, real PostgreSQL: every racer gets the same saga.

    Several rounds, each with a fresh key and all threads released together,
    so the losing inserts hit the unique key rather than finding the row.
    """
    a, b = instance(pg_url), instance(pg_url)
    rounds, racers = 5, 8
    try:
        with serving(a.app, b.app) as servers, httpx.Client(timeout=30) as http:
            for round_ in range(rounds):
                key = f"race-{round_}"

                def enqueue(i: int, key: str = key) -> httpx.Response:
                    server = servers[i % 2]
                    return http.post(
                        f"{server.url}/sagas",
                        content=BODY,
                        headers={**HEADERS, "Idempotency-Key": key},
                    )

                results = run_threads(racers, enqueue)
                errors = [r for r in results if not isinstance(r, httpx.Response)]
                assert not errors, errors
                statuses = sorted(r.status_code for r in results)
                assert statuses == [200] * (racers - 1) + [201], [r.text for r in results]
                assert len({r.json()["saga_id"] for r in results}) == 1
        total = counts(a.engine)
        assert (total.sagas, total.outbox) == (rounds, rounds)
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_concurrent_requests_with_different_payloads_conflict_cleanly(pg_url: str) -> None:
    """Racers with the same key but two different payloads: one saga, the losers
    with the other payload get 409 naming it, never a second saga or a 500."""
    a, b = instance(pg_url), instance(pg_url)
    racers = 8
    bodies = [
        BODY,
        json.dumps({"saga": "order-payment", "payload": {**PAYMENT, "amount_cents": 5}}),
    ]
    try:
        with serving(a.app, b.app) as servers, httpx.Client(timeout=30) as http:
            results = run_threads(
                racers,
                lambda i: http.post(
                    f"{servers[i % 2].url}/sagas",
                    content=bodies[(i // 2) % 2],
                    headers={**HEADERS, "Idempotency-Key": "mixed"},
                ),
            )
        assert all(isinstance(r, httpx.Response) for r in results), results
        created = [r for r in results if r.status_code == 201]
        assert len(created) == 1
        winner = created[0].json()["saga_id"]
        for r in results:
            assert r.status_code in (200, 201, 409), r.text
            assert (r.json().get("saga_id")) == winner
        assert counts(a.engine).sagas == 1
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_key_is_read_as_utf8_over_real_http(pg_url: str) -> None:
    # Real uvicorn: FastAPI's TestClient re-encodes header values, so it cannot
    # send the bytes a real client sends.
    api = instance(pg_url)
    try:
        with serving(api.app) as (server,), httpx.Client(base_url=server.url) as http:
            key = "zamówienie-✓"
            r = http.post(
                "/sagas", content=BODY, headers={**HEADERS, "Idempotency-Key": key.encode()}
            )
            assert r.status_code == 201, r.text
            assert http.get(r.headers["Location"]).json()["idempotency_key"] == key

            r = http.post("/sagas", content=BODY, headers={**HEADERS, "Idempotency-Key": b"k\xff"})
            assert r.status_code == 400
            assert r.json()["error"] == "invalid_idempotency_key"
            assert r.json()["fields"] == ["Idempotency-Key"]
        assert counts(api.engine).sagas == 1
    finally:
        api.engine.dispose()
