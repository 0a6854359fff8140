"""A test deployment for the runbooks: its settings, its processes, what its store holds.

**Deployment.** Real PostgreSQL (the session's test database), per-module
RabbitMQ queues, a devnet running the sagafacts chaincode, and the product's
processes (`saga relay`, `saga worker`, `saga api`, `saga watcher`) started
from the same commands an operator runs, each only when a runbook needs it.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient
from saga.adapters.sql import create_engine
from saga.adapters.sql.tables import ledger_attempts, sagas
from saga.config import Settings
from saga.core.state import SagaStatus
from tests.support.ledger import LedgerNet
from tests.support.ports import free_port
from tests.support.processes import Processes, SagaProcess, saga_env
from tests.support.waiting import wait_for

DEFINITIONS = "saga.examples.order_payment_ledger"


@dataclass
class Deployment:
    settings: Settings
    net: LedgerNet
    procs: Processes
    work: Path
    _engine: Engine | None = None
    _client: GatewayClient | None = None
    _running: dict[str, SagaProcess] = field(default_factory=dict)

    @classmethod
    def build(
        cls, pg_url: str, amqp_url: str, net: LedgerNet, work: Path, procs: Processes
    ) -> Deployment:
        prefix = f"runbooks.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        settings = Settings(
            database_url=pg_url,
            broker_url=amqp_url,
            definitions=DEFINITIONS,
            step_queue=f"{prefix}.steps",
            dead_letter_queue=f"{prefix}.dead-letter",
            relay_poll_interval=0.05,
            worker_concurrency=2,
            api_port=free_port(),
            api_token="runbook-test-token",
            log_level="INFO",
            fabric_profile=str(net.devnet.profile(1)),
            fabric_msp_dir=str(net.msp_dir(1)),
            fabric_channel=net.channel,
            chain_recheck_delay=1.0,
        )
        return cls(settings, net, procs, work)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.settings)
        return self._engine

    @property
    def client(self) -> GatewayClient:
        if self._client is None:
            self._client = self.net.gateway()
        return self._client

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def env(self, **variables: str) -> dict[str, str]:
        """What the runbook's shell sees: SAGA_* of this deployment plus the variables."""
        return saga_env(
            self.settings, SAGA_LOG_LEVEL="WARNING", SAGA_API_URL=self.api_url, **variables
        )

    # -- processes ---------------------------------------------------------------------

    def start(self, *names: str) -> None:
        for name in names:
            process = self._running.get(name)
            if process is not None and process.alive():
                continue
            if name == "relay":
                process = self.procs.relay(self.settings)
            elif name == "worker":
                process = self.procs.worker(self.settings, concurrency=2)
            elif name == "watcher":
                process = self.procs.spawn(
                    "watcher", ["saga", "watcher", "--poll-interval", "0.2"], self.settings
                )
            elif name == "api":
                process = self.procs.spawn("api", ["saga", "api"], self.settings)
                wait_for(
                    self._api_up, timeout=60, what="the API", alive=[process], report=self.report
                )
            else:
                raise ValueError(f"no process {name!r}")
            self._running[name] = process

    def stop(self, *names: str) -> None:
        for name in names:
            process = self._running.pop(name, None)
            if process is not None:
                process.stop(timeout=20)

    def _api_up(self) -> bool:
        try:
            request = urllib.request.Request(
                f"{self.api_url}/metrics",
                headers={"Authorization": f"Bearer {self.settings.api_token}"},
            )
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def report(self) -> str:
        return self.procs.report()

    def close(self) -> None:
        self.procs.stop_all(timeout=20)
        if self._engine is not None:
            self._engine.dispose()

    # -- reading the store -------------------------------------------------------------

    def status(self, saga_id: str) -> SagaStatus:
        with self.engine.connect() as c:
            value = c.execute(select(sagas.c.status).where(sagas.c.id == saga_id)).scalar_one()
        return SagaStatus(value)

    def wait_status(self, saga_id: str, status: SagaStatus, timeout: float = 60.0) -> None:
        wait_for(
            lambda: self.status(saga_id) is status,
            timeout=timeout,
            what=f"saga {saga_id} {status}",
            report=self.report,
        )

    def attempt_states(self, saga_id: str) -> list[tuple[str, str, int | None]]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(ledger_attempts.c.txid, ledger_attempts.c.state, ledger_attempts.c.code)
                .where(ledger_attempts.c.saga_id == saga_id)
                .order_by(ledger_attempts.c.created_at)
            )
            return [(r.txid, r.state, r.code) for r in rows]


@contextlib.contextmanager
def quiet(deployment: Deployment) -> Iterator[None]:
    """No relay while a situation is made (nothing is published behind the test's back)."""
    deployment.stop("relay")
    yield
