"""`saga wait` against a real PostgreSQL: it returns when a real relay and worker
(RabbitMQ) finish a saga, and its exit codes tell a script what happened: reached,
no such saga, bad option or store, timed out, ended in a status not waited for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy.engine import Engine, make_url
from typer.testing import CliRunner

from saga.cli import app
from saga.config import Settings
from saga.core.state import SagaState, SagaStatus
from saga.orchestrator import Orchestrator
from saga.ports import UnitOfWorkFactory
from saga.registry_loader import load_registry
from saga.store import SqlUnitOfWorkFactory, create_engine
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import ROOT, celery_worker, relay_thread, worker_env

PAYMENT = {"order_id": "o-1", "customer_id": "c-1", "amount_cents": 1250, "currency": "EUR"}
DEFINITIONS = "saga.examples.order_payment"

runner = CliRunner()


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


def _uow(engine: Engine) -> UnitOfWorkFactory:
    return cast(UnitOfWorkFactory, SqlUnitOfWorkFactory(engine))


def _enqueue(engine: Engine, **payload: Any) -> str:
    orchestrator = Orchestrator(load_registry(DEFINITIONS), _uow(engine))
    return orchestrator.enqueue("order-payment", {**PAYMENT, **payload}).saga_id


def _set(engine: Engine, saga_id: str, **state: Any) -> None:
    with _uow(engine)() as uow:
        record = uow.sagas.get(saga_id, for_update=True)
        assert record is not None
        new_state: SagaState = replace(record.state, **state)
        uow.sagas.save(replace(record, state=new_state))
        uow.commit()


def _env(pg_url: str) -> dict[str, str]:
    return {
        "SAGA_DATABASE_URL": pg_url,
        "SAGA_DEFINITIONS": DEFINITIONS,
        "SAGA_LOG_LEVEL": "WARNING",
    }


def _wait(pg_url: str, *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["wait", *args], env=_env(pg_url))
    assert result.exit_code == code, (args, result.output)
    return result


def _wait_json(pg_url: str, *args: str, code: int = 0) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(_wait(pg_url, *args, "--json", code=code).stdout))


def test_wait_returns_when_a_real_worker_finishes_the_saga(
    broker_settings: Settings, engine: Engine, pg_url: str, tmp_path: Path
) -> None:
    settings = replace(broker_settings, database_url=pg_url, definitions=DEFINITIONS)
    good = _enqueue(engine)
    declined = _enqueue(engine, simulate="decline_payment")
    env = {**worker_env(settings), "SAGA_LOG_LEVEL": "WARNING"}

    def wait_process(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "saga", "wait", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # Started before any relay or worker runs: they have to block, then see the end.
    waits = {
        "good": wait_process(good, "--timeout", "120", "--json", "--interval", "0.1"),
        "declined": wait_process(declined, "--timeout", "120"),
        "declined, want completed": wait_process(declined, "--status", "completed"),
    }
    # Long enough for them to start polling (an import takes about a second).
    time.sleep(3.0)
    assert all(p.poll() is None for p in waits.values()), "wait returned before any worker ran"

    log = tmp_path / "worker.log"
    with relay_thread(settings, engine), celery_worker(settings, log):
        results = {name: (p.communicate(timeout=150), p.returncode) for name, p in waits.items()}

    (out, err), code = results["good"]
    assert code == 0, (out, err, log.read_text()[-3000:])
    data = json.loads(out)
    assert data["id"] == good and data["status"] == "completed" and data["outcome"] == "reached"
    assert data["wanted"] == ["completed", "compensated", "failed"]
    assert data["store_error"] is None
    assert data["saga"] == "order-payment" and data["waited_seconds"] >= 1.0
    assert err == "", "no progress output when stderr is not a terminal"

    (out, err), code = results["declined"]
    assert code == 0, (out, err)
    assert out.startswith(f"{declined}: compensated (waited ")
    assert "reason:" in out and err == ""

    # Waiting for completed, the saga compensated: 4, at once, with why.
    (out, err), code = results["declined, want completed"]
    assert code == 4, (out, err)
    assert f"{declined}: compensated at step" in out
    assert f"saga {declined} ended compensated, not completed" in err
    assert "final" in err


def test_wait_exit_codes_tell_what_happened(engine: Engine, pg_url: str) -> None:
    running = _enqueue(engine)

    # Timed out: 3, the status it stopped at, and what to do.
    started = time.monotonic()
    late = _wait(pg_url, running, "--timeout", "0.6", "--interval", "0.1", code=3)
    assert time.monotonic() - started >= 0.6
    assert f"{running}: running at step reserve_funds" in late.stdout
    assert f"saga {running} is still running after" in late.stderr
    assert "--timeout" in late.stderr and f"saga show {running}" in late.stderr
    timed_out = _wait_json(pg_url, running, "--timeout", "0", code=3)
    assert (timed_out["outcome"], timed_out["status"]) == ("timeout", "running")

    # A status it already has: 0 at once.
    now = _wait_json(pg_url, running, "--status", "running,compensating", "--timeout", "0")
    assert (now["outcome"], now["status"]) == ("reached", "running")
    assert now["wanted"] == ["running", "compensating"]

    # No such saga: 1, saying how to find one. Bad --status: 2, listing the statuses.
    missing = _wait(pg_url, "no-such-saga", "--timeout", "5", code=1)
    assert "no saga no-such-saga" in missing.output and "saga list" in missing.output
    bad = _wait(pg_url, running, "--status", "completed,done", code=2)
    assert "done: no such saga status" in bad.output
    assert "running, compensating, completed, compensated, failed" in bad.output

    # The store cannot be read: 2, naming the setting.
    down = runner.invoke(
        app, ["wait", running, "--db", "postgresql://postgres@127.0.0.1:1/test"], env=_env(pg_url)
    )
    assert down.exit_code == 2, down.output
    assert "cannot read saga" in down.output and "SAGA_DATABASE_URL" in down.output

    # Failed is terminal: the default wait ends with 0; waiting for completed ends with 4
    # and points at the operator commands.
    failed = _enqueue(engine)
    _set(engine, failed, status=SagaStatus.FAILED, reason="notify_customer: gave up")
    done = _wait_json(pg_url, failed)
    assert (done["status"], done["reason"]) == ("failed", "notify_customer: gave up")
    ended = _wait(pg_url, failed, "--status", "completed", "--status", "compensated", code=4)
    assert "ended failed, not completed|compensated" in ended.stderr
    assert "saga resume" in ended.stderr
    assert "reason: notify_customer: gave up" in ended.stdout


def test_wait_sees_the_change_it_waits_for(engine: Engine, pg_url: str) -> None:
    saga_id = _enqueue(engine)

    def later() -> None:
        time.sleep(0.5)
        _set(engine, saga_id, status=SagaStatus.COMPENSATING)
        time.sleep(0.5)
        _set(engine, saga_id, status=SagaStatus.COMPENSATED)

    mover = threading.Thread(target=later)
    mover.start()
    try:
        first = _wait_json(pg_url, saga_id, "--status", "compensating", "--timeout", "30")
        assert first["status"] == "compensating" and 0.4 <= first["waited_seconds"] < 10
        final = _wait_json(pg_url, saga_id, "--timeout", "30", "--interval", "0.05")
        assert final["status"] == "compensated" and final["outcome"] == "reached"
    finally:
        mover.join()


def test_wait_rides_out_a_store_outage(engine: Engine, pg_url: str) -> None:
    """PostgreSQL cut off mid-wait (through a proxy; the shared server keeps running):
    the wait keeps polling and returns once the store answers again."""
    saga_id = _enqueue(engine)
    url = make_url(pg_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
        wait = subprocess.Popen(
            [sys.executable, "-m", "saga", "wait", saga_id, "--timeout", "60", "--json"],
            cwd=ROOT,
            env={**os.environ, **_env(through_proxy)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(3.0)  # started and polling
            assert wait.poll() is None
            proxy.stop()  # open connections reset, new ones refused
            _set(engine, saga_id, status=SagaStatus.COMPLETED)
            time.sleep(2.0)  # polls fail meanwhile
            assert wait.poll() is None, wait.communicate()
            proxy.start()  # the same port again
            out, err = wait.communicate(timeout=30)
        finally:
            if wait.poll() is None:
                wait.kill()
                wait.wait()
    assert wait.returncode == 0, (out, err)
    assert json.loads(out)["status"] == "completed"
