"""The enqueue API under test: fixtures (`api`, `http`) and helpers.

Real stores (the fixtures of tests/support/postgres.py), the real app under
FastAPI's TestClient or a real uvicorn on a free port, and a small HTTP load
balancer whose faults are scripted per request.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import outbox, saga_history, saga_steps, sagas
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from saga.core.definitions import Registry, SagaDefinition, Step, StepContext
from saga.entrypoints.http import create_app
from saga.examples import order_payment

PAYMENT = {
    "order_id": "o-1001",
    "customer_id": "c-42",
    "amount_cents": 1999,
    "currency": "EUR",
}


class Ping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str


def _noop(ctx: StepContext) -> None:
    return None


# A second saga, so "same key, different saga" can be told from "different payload".
PING = SagaDefinition(name="ping", version=1, input_model=Ping, steps=(Step("pong", _noop),))


def registry() -> Registry:
    reg = order_payment.register(Registry())
    reg.add(PING)
    return reg


@dataclass
class Instance:
    """One API instance: its own engine, orchestrator and app (as a second server has)."""

    engine: Engine
    orchestrator: Orchestrator
    app: FastAPI
    settings: Settings


def instance(url: str, **settings: Any) -> Instance:
    engine = create_engine(url)
    orch = Orchestrator(registry(), SqlUnitOfWorkFactory(engine), transient_errors=TRANSIENT_ERRORS)
    conf = Settings(database_url=url, **settings)
    return Instance(engine, orch, create_app(orch, conf), conf)


@dataclass(frozen=True)
class Counts:
    sagas: int
    steps: int
    outbox: int
    history: int


def counts(engine: Engine) -> Counts:
    with engine.connect() as c:
        return Counts(
            *(
                c.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (sagas, saga_steps, outbox, saga_history)
            )
        )


NOTHING = Counts(0, 0, 0, 0)


class Server:
    """A real uvicorn serving `app` on a free loopback port, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@contextmanager
def serving(*apps: FastAPI) -> Iterator[list[Server]]:
    servers = [Server(app).start() for app in apps]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


# What the balancer does with one request: forward it and answer ("pass"),
# answer 503 without forwarding ("503"), or forward it and then drop the
# connection without an answer ("drop": the backend did the work, the caller
# never hears of it, as when a balancer or network times out mid-request).
Action = str


@dataclass
class Balancer:
    """A round-robin HTTP load balancer with scripted faults, on a free port."""

    backends: Sequence[str]
    script: list[Action] = field(default_factory=list)
    seen: list[tuple[str, Action]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._next = itertools.cycle(self.backends)
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=10)
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with balancer._lock:
                    action = balancer.script.pop(0) if balancer.script else "pass"
                    backend = next(balancer._next)
                    balancer.seen.append((backend, action))
                if action == "503":
                    self._reply(503, {"Content-Type": "text/plain"}, b"no healthy upstream")
                    return
                # Back to the bytes that came in (http.server decoded them as latin-1).
                headers = {
                    k: v.encode("latin-1")
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "connection", "content-length")
                }
                upstream = balancer._http.request(
                    self.command, backend + self.path, content=body, headers=headers
                )
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                out = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")
                }
                self._reply(upstream.status_code, out, upstream.content)

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _handle
            do_POST = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


def run_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    """Run target(i) for i in range(n) in n threads released together; results in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


JSON = {"Content-Type": "application/json"}


@pytest.fixture
def api(store_url: str) -> Iterator[Instance]:
    inst = instance(store_url, max_payload_bytes=2048, max_payload_depth=6)
    yield inst
    inst.engine.dispose()


@pytest.fixture
def http(api: Instance) -> Iterator[TestClient]:
    with TestClient(api.app) as client:
        yield client


def post(http: TestClient, body: Any, key: str | bytes | None = "key-1", **headers: str) -> Any:
    hdrs: dict[str, str | bytes] = dict(JSON)
    if key is not None:
        hdrs["Idempotency-Key"] = key
    hdrs.update(headers)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post("/sagas", content=content, headers=hdrs)


def start(payload: dict[str, Any] | None = None, saga: str = "order-payment") -> dict[str, Any]:
    return {"saga": saga, "payload": PAYMENT if payload is None else payload}


def assert_error(response: Any, status: int, code: str, fields: list[str] | None = None) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["fields"], list)
    if fields is not None:
        assert body["fields"] == fields, body
    return body
