"""RabbitMQ and PostgreSQL stopped and started again while 200 sagas run.

The relay and the worker are NOT restarted by the test: they must survive the
outage and reconnect by themselves (a dead one fails the test at once). The
server is stopped for a few seconds mid-flow, started again, and every saga
must reach its expected terminal state with each business action exactly once,
no valid message dead-lettered, no step message applied twice.

These tests stop servers every other test on the machine uses: the outage
context managers (tests/fault/services.py) always start the server again and
wait until it answers, and this module's fixture checks both once more at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import replace

import pytest
from sqlalchemy.engine import Engine, make_url

from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from tests.fault.checks import (
    check_sagas,
    doubled_rows,
    enqueue_mix,
    terminal_count,
    wait_terminal,
)
from tests.fault.services import (
    postgres_outage,
    rabbitmq_answers,
    rabbitmq_outage,
    start_postgres,
    start_rabbitmq,
)
from tests.support.processes import Processes, SagaProcess
from tests.support.rabbitmq import queue_depth
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for

SAGAS = 200
OUTAGE_SECONDS = 4.0


@pytest.fixture(autouse=True)
def _servers_left_running() -> Iterator[None]:
    try:
        yield
    finally:
        start_rabbitmq()
        start_postgres()


def applied_twice(workers: list[SagaProcess]) -> list[str]:
    applied: Counter[str] = Counter()
    for worker in workers:
        for r in worker.log_records():
            if r.get("msg") == "step message handled" and r.get("outcome") == "applied":
                applied[str(r.get("task_id"))] += 1
    return [task for task, n in applied.items() if n > 1]


@contextmanager
def _proxied(settings: Settings, service: str) -> Iterator[tuple[Settings, TcpProxy]]:
    """Settings whose broker (or database) URL goes through a TCP proxy of its own."""
    field = "broker_url" if service == "rabbitmq" else "database_url"
    url = make_url(getattr(settings, field).replace("amqp://", "amqp+x://", 1))
    with TcpProxy(
        url.host or "127.0.0.1", url.port or (5672 if service == "rabbitmq" else 5432)
    ) as proxy:
        proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
        proxied = proxied.replace("amqp+x://", "amqp://", 1)
        if service == "rabbitmq":
            yield replace(settings, broker_url=proxied), proxy
        else:
            yield replace(settings, database_url=proxied), proxy


def _live_connections(proxy: TcpProxy) -> int:
    """Connections the proxy carries now, both ends open (the proxy keeps closed ones
    listed until it stops)."""
    with proxy._lock:
        pairs = list(proxy._pairs)
    return sum(1 for a, b in pairs if a.fileno() != -1 and b.fileno() != -1)


@contextmanager
def _proxy_outage(proxy: TcpProxy, cut: list[int]) -> Iterator[None]:
    cut.append(_live_connections(proxy))
    proxy.stop()
    try:
        yield
    finally:
        proxy.start()


def _run_with_outage(
    outage: str,
    settings: Settings,
    engine: Engine,
    orch: Orchestrator,
    procs: Processes,
) -> None:
    service, _, how = outage.partition("-")
    cut: list[int] = []
    with ExitStack() as stack:
        if how == "proxy":
            process_settings, proxy = stack.enter_context(_proxied(settings, service))
            manager: AbstractContextManager[None] = _proxy_outage(proxy, cut)
        else:
            process_settings = settings
            manager = rabbitmq_outage() if service == "rabbitmq" else postgres_outage()
        _flow(outage, manager, settings, process_settings, engine, orch, procs)
    if how == "proxy":
        # The cut struck the relay's and worker's open connections, not an idle proxy.
        assert cut and cut[0] > 0, cut


def _flow(
    outage: str,
    manager: AbstractContextManager[None],
    settings: Settings,
    process_settings: Settings,
    engine: Engine,
    orch: Orchestrator,
    procs: Processes,
) -> None:
    expected = enqueue_mix(orch, f"{outage}-restart", SAGAS)
    ids = list(expected)
    relay = procs.relay(process_settings)
    worker = procs.worker(process_settings, concurrency=2)
    survivors = [relay, worker]

    def safe_terminal() -> int:
        try:
            return terminal_count(engine, ids)
        except Exception:
            return 0

    # Hit the flow in the middle: some sagas finished, most still to go.
    wait_for(
        lambda: safe_terminal() >= SAGAS // 8,
        timeout=90,
        what=f"{SAGAS // 8} sagas to finish before the outage",
        report=procs.report,
        alive=survivors,
    )
    before = safe_terminal()
    with manager:
        time.sleep(OUTAGE_SECONDS)  # the outage's length, not a wait for evidence
        assert all(p.alive() for p in survivors), procs.report()
    at_restart = safe_terminal()

    wait_terminal(engine, ids, timeout=240, logs=procs.report, alive=survivors)
    check_sagas(engine, expected)
    assert doubled_rows(engine) == []
    assert applied_twice([worker]) == []
    assert rabbitmq_answers()
    assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 0
    assert all(p.alive() for p in survivors), procs.report()
    # The outage struck mid-flow: sagas were in flight when the service went away
    # and still to finish when it came back, so the survivors' recovery carried them.
    assert SAGAS // 8 <= before < SAGAS, before
    assert at_restart < SAGAS, at_restart


@pytest.mark.fault
@pytest.mark.timeout(600)
def test_rabbitmq_restarted_while_200_sagas_run(
    settings: Settings, engine: Engine, orch: Orchestrator, procs: Processes
) -> None:
    _run_with_outage("rabbitmq", settings, engine, orch, procs)


@pytest.mark.fault
@pytest.mark.timeout(600)
def test_postgres_restarted_while_200_sagas_run(
    settings: Settings, engine: Engine, orch: Orchestrator, procs: Processes
) -> None:
    _run_with_outage("postgres", settings, engine, orch, procs)


@pytest.mark.fault
@pytest.mark.parametrize("service", ["rabbitmq", "postgres"])
def test_connections_cut_by_a_proxy_while_200_sagas_run(
    service: str, settings: Settings, engine: Engine, orch: Orchestrator, procs: Processes
) -> None:
    """The same flow with the relay's and worker's connections cut (the server stays up)."""
    _run_with_outage(f"{service}-proxy", settings, engine, orch, procs)
