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
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from typer.testing import CliRunner

from saga.adapters.sql import SqlUnitOfWorkFactory, create_engine
from saga.app.orchestrator import Orchestrator
from saga.config import Settings
from saga.core.state import SagaState, SagaStatus
from saga.entrypoints.cli.main import app
from saga.ports.store import UnitOfWorkFactory
from saga.registry_loader import load_registry
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
    assert f"{declined}: compensated (waited " in out
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


class _Selects:
    """Counts the SELECTs engines other than the test's own send (the command's reads)."""

    def __init__(self, own: Engine) -> None:
        self.own = own
        self.count = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if conn.engine is not self.own and statement.lstrip().upper().startswith("SELECT"):
            self.count += 1


def test_wait_takes_many_ids_and_reads_them_all_in_one_query_per_poll(
    engine: Engine, pg_url: str
) -> None:
    ids = [_enqueue(engine) for _ in range(50)]
    done = threading.Event()

    def finish() -> None:
        # In batches, so the wait sees some finished and some not over several polls.
        for n, saga_id in enumerate(ids):
            status = SagaStatus.COMPLETED if n % 2 else SagaStatus.COMPENSATED
            _set(engine, saga_id, status=status)
            if n % 10 == 9:
                time.sleep(0.2)
        done.set()

    selects = _Selects(engine)
    mover = threading.Thread(target=finish)
    event.listen(Engine, "before_cursor_execute", selects)
    mover.start()
    try:
        result = _wait_json(
            pg_url,
            *ids,
            "--status",
            "completed,compensated",
            "--timeout",
            "60",
            "--interval",
            "0.1",
        )
    finally:
        event.remove(Engine, "before_cursor_execute", selects)
        mover.join()
    assert done.is_set()
    assert result["outcome"] == "reached" and result["counts"] == {
        "completed": 25,
        "compensated": 25,
    }
    assert [s["id"] for s in result["sagas"]] == ids
    assert all(s["outcome"] == "reached" for s in result["sagas"])
    assert result["polls"] >= 2, "it saw the sagas finish over several polls"
    # The first read, then one statement per poll, whatever the number of sagas.
    assert selects.count == result["polls"] + 1, (selects.count, result["polls"])


def test_wait_on_many_reports_each_and_exits_by_the_worst(engine: Engine, pg_url: str) -> None:
    good, bad, slow = (_enqueue(engine) for _ in range(3))
    _set(engine, good, status=SagaStatus.COMPLETED)
    _set(engine, bad, status=SagaStatus.FAILED, reason="notify_customer: gave up")

    # One ended in a status not waited for, one still running: the timeout wins (3), and
    # every saga is listed with where it stands.
    late = _wait(pg_url, good, bad, slow, "--status", "completed", "--timeout", "0.5", code=3)
    assert f"{good}: completed" in late.stdout and f"{bad}: failed" in late.stdout
    assert f"{slow}: running" in late.stdout
    assert "1 of 3 sagas reached completed" in late.stderr and "still running: 1" in late.stderr
    _set(engine, slow, status=SagaStatus.COMPLETED)
    ended = _wait_json(pg_url, good, bad, slow, "--status", "completed", code=4)
    assert ended["outcome"] == "ended" and ended["counts"] == {"completed": 2, "failed": 1}
    by_id = {s["id"]: s for s in ended["sagas"]}
    assert by_id[bad]["outcome"] == "ended" and by_id[bad]["reason"] == "notify_customer: gave up"

    # An id that does not exist is refused before any waiting, naming it.
    missing = _wait(pg_url, good, "no-such-saga", code=1)
    assert "no saga no-such-saga" in missing.output


def test_wait_for_the_sagas_a_filter_selects(engine: Engine, pg_url: str) -> None:
    running = [_enqueue(engine) for _ in range(3)]
    other = _enqueue(engine, customer_id="c-2")
    done = _enqueue(engine)
    _set(engine, done, status=SagaStatus.COMPLETED)

    # The selection is made once, at the start: the sagas of customer c-1 running now.
    select = ["--where", "status=running", "--where", "input.customer_id=c-1"]
    pending = _wait_json(pg_url, *select, "--status", "completed", "--timeout", "0", code=3)
    assert sorted(s["id"] for s in pending["sagas"]) == sorted(running)
    assert pending["counts"] == {"running": 3}
    assert not {other, done} & {s["id"] for s in pending["sagas"]}

    def finish() -> None:
        time.sleep(0.5)
        for saga_id in running:
            _set(engine, saga_id, status=SagaStatus.COMPLETED)

    mover = threading.Thread(target=finish)
    mover.start()
    try:
        result = _wait_json(
            pg_url, *select, "--status", "completed", "--timeout", "30", "--interval", "0.1"
        )
    finally:
        mover.join()
    assert result["outcome"] == "reached" and result["counts"] == {"completed": 3}
    # Ids and a filter together: the union.
    both = _wait_json(pg_url, other, "--where", "input.customer_id=c-1", "--timeout", "0", code=3)
    assert {s["id"] for s in both["sagas"]} == {other, *running, done}

    nothing = _wait(pg_url, "--where", "status=compensated", code=1)
    assert "no saga matches" in nothing.output
    bad = _wait(pg_url, "--where", "colour=blue", code=2)
    assert "--where colour=blue" in bad.output and "input.FIELD" in bad.output
    neither = _wait(pg_url, code=2)
    assert "give saga ids or --where" in neither.output
