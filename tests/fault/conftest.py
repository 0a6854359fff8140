"""Fixtures for fault tests: real PostgreSQL, real RabbitMQ, real `saga` processes.

A missing service FAILS the test (the postgres and rabbitmq plugins do that),
never skips it. When a test fails, the tail of every process log it started is
attached to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory, create_engine
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from saga.registry_loader import load_registry
from tests.support.processes import Processes

DEFINITIONS = "saga.examples.order_payment,tests.fault.fault_sagas"


@pytest.fixture
def settings(broker_settings: Settings, pg_url: str) -> Settings:
    """This test's queues and the session's database, with the fault sagas loaded."""
    return replace(
        broker_settings,
        database_url=pg_url,
        definitions=DEFINITIONS,
        relay_poll_interval=0.05,
        worker_prefetch=1,
        # A step held for a worker killed mid-inline goes out this soon.
        worker_inline_reserve=2.0,
        log_format="json",
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = create_engine(settings)
    yield eng
    eng.dispose()


@pytest.fixture
def orch(settings: Settings, engine: Engine) -> Orchestrator:
    return Orchestrator(
        load_registry(settings.definitions),
        SqlUnitOfWorkFactory(engine),
        transient_errors=tuple(TRANSIENT_ERRORS),
    )


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with Processes(tmp_path / "logs") as processes:
        yield processes


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when == "call" and report.failed:
        funcargs = getattr(item, "funcargs", {})
        processes = funcargs.get("procs")
        if isinstance(processes, Processes) and processes.started:
            report.sections.append(("saga process logs", processes.report(lines=40)))
