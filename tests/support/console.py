"""The operator console under test: `saga api`'s app built by the composition root,
served by a real uvicorn, and a thread that moves sagas on (relay and worker in
one, without a broker, like tests/support/outbox.py's drive_outbox) which a test
can pause to see a page before the saga moves."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from kombu import Connection
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from sqlalchemy.engine import Engine

from saga.adapters.rabbitmq import Topology
from saga.adapters.sql import SqlOutboxReader
from saga.app.orchestrator import Orchestrator
from saga.bootstrap import Container
from saga.config import Settings
from saga.core.state import SagaStatus
from saga.core.step_message import StepMessage
from saga.entrypoints.http.app import create_app
from saga.entrypoints.http.ui import ConsoleServices
from saga.entrypoints.http.ui.auth import COOKIE
from saga.entrypoints.http.ui.passwords import hash_password
from tests.support import shipment_saga as shipment
from tests.support.api import Server
from tests.support.browser import Browser

ORDER = {"order_id": "o-4711", "customer_id": "c-17", "amount_cents": 4200}
OPERATOR = ("olga", "correct horse battery staple")
READER = ("rita", "read only please")
API_TOKEN = "console-test-token"
# Hashed once per test session: scrypt is slow on purpose.
_USERS: str | None = None


def users() -> str:
    global _USERS
    if _USERS is None:
        _USERS = ",".join(
            [
                f"{OPERATOR[0]}:operator:{hash_password(OPERATOR[1])}",
                f"{READER[0]}:read-only:{hash_password(READER[1])}",
            ]
        )
    return _USERS


class Driver:
    """Handles every due outbox message in a thread until stopped; `paused` holds it."""

    def __init__(self, orchestrator: Orchestrator, engine: Engine) -> None:
        self._orchestrator = orchestrator
        self._reader = SqlOutboxReader(engine)
        self.running = threading.Event()
        self.running.set()
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="console-driver", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.running.wait(0.1):
                continue
            try:
                with self._reader.claim(20) as claimed:
                    self._reader.mark_published([p.id for p in claimed])
                for pending in claimed:
                    self._orchestrator.handle(StepMessage.from_body(pending.body))
            except Exception as exc:  # surfaced by the test through .errors
                self.errors.append(exc)
                time.sleep(0.2)
                continue
            if not claimed:
                time.sleep(0.05)

    def start(self) -> Driver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._reader.close()


@dataclass
class ConsoleUnderTest:
    container: Container
    server: Server
    driver: Driver

    @property
    def url(self) -> str:
        return self.server.url + "/ui"

    @property
    def orchestrator(self) -> Orchestrator:
        return self.container.orchestrator()


@contextmanager
def console_running(settings: Settings) -> Iterator[ConsoleUnderTest]:
    container = Container(settings)
    # The queues exist as soon as a worker or the relay has run: the overview's depths.
    with Connection(settings.broker_url) as connection:
        Topology.from_settings(settings).declare_kombu(connection)
    app = create_app(
        container.orchestrator(),
        settings,
        metrics=container.api_metrics(),
        console=ConsoleServices.from_container(container),
    )
    server = Server(app).start()
    driver = Driver(container.orchestrator(), container.engine).start()
    try:
        yield ConsoleUnderTest(container, server, driver)
    finally:
        driver.stop()
        server.stop()
        container.engine.dispose()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def session_cookie(response: httpx.Response) -> str:
    """The console's cookie from a response, asserted to be HttpOnly, SameSite=Strict
    and Secure (httpx keeps a Secure cookie out of plain-http requests, so tests
    carry it themselves)."""
    header = response.headers.get("set-cookie", "")
    assert header.startswith(f"{COOKIE}="), header
    flags = [f.strip().lower() for f in header.split(";")[1:]]
    assert "httponly" in flags and "samesite=strict" in flags and "secure" in flags, header
    return header.split(";")[0]


def logged_in(base: str, user: tuple[str, str]) -> httpx.Client:
    """An HTTP client with a console session (as the browser gets one)."""
    client = httpx.Client(base_url=base, timeout=30)
    page = client.get("/ui/login")
    client.headers["Cookie"] = session_cookie(page)
    answer = client.post(
        "/ui/login",
        data={"csrf_token": csrf_of(page.text), "username": user[0], "password": user[1]},
    )
    assert answer.status_code == 303, answer.text
    client.headers["Cookie"] = session_cookie(answer)
    return client


def console_settings(
    pg_url: str, broker: Settings, profile: str, msp_dir: str, channel: str
) -> Settings:
    return Settings(
        database_url=pg_url,
        broker_url=broker.broker_url,
        step_queue=broker.step_queue,
        dead_letter_queue=broker.dead_letter_queue,
        definitions="tests.support.shipment_saga",
        api_token=API_TOKEN,
        ui_users=users(),
        fabric_profile=profile,
        fabric_msp_dir=msp_dir,
        fabric_channel=channel,
        chain_recheck_delay=0.3,
        fabric_status_timeout=2.0,
        log_level="WARNING",
    )


def status_of(orchestrator: Orchestrator, saga_id: str) -> SagaStatus:
    record, _ = orchestrator.get(saga_id)
    return record.state.status


def shipment_until(
    console: ConsoleUnderTest, key: str, status: SagaStatus = SagaStatus.FAILED
) -> str:
    """A shipment saga run until `status`: FAILED once its ledger step committed and its
    last step failed (shipment_saga.CARRIER closed), COMPLETED with the carrier open."""
    orchestrator = console.orchestrator
    saga_id = orchestrator.enqueue(shipment.NAME, ORDER, idempotency_key=key).saga_id
    deadline = time.monotonic() + 60
    while status_of(orchestrator, saga_id) is not status:
        assert time.monotonic() < deadline, orchestrator.get(saga_id)
        assert not console.driver.errors, console.driver.errors
        time.sleep(0.1)
    return saga_id


def log_in(browser: Browser, base: str, user: tuple[str, str], then: str = "/") -> None:
    d = browser.driver
    d.get(base + then)
    browser.wait("the login page", lambda: "/ui/login" in d.current_url)
    d.find_element(By.ID, "username").send_keys(user[0])
    d.find_element(By.ID, "password").send_keys(user[1] + Keys.ENTER)
    browser.wait("the page after login", lambda: "/ui/login" not in d.current_url)
