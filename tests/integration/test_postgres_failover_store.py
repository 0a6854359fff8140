"""The store on a multi-host URL, across a real failover (primary crashed, standby promoted).

One URL names both servers with target_session_attrs=read-write; after the
primary dies and the standby is promoted, the same engine must reach the new
primary by itself: the transaction that meets the dead server fails as an
outage (transient, never a step failure), the pool drops every connection to
the dead server at once, and the relay's LISTEN connection (which psycopg opens
outside the pool) follows too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory, create_engine, is_transient
from saga.adapters.sql.outbox import SqlOutboxReader
from saga.adapters.sql.tables import sagas
from saga.app.orchestrator import Orchestrator
from saga.examples.order_payment import NAME
from saga.ports.store import StoreUnavailable
from saga.registry_loader import load_registry
from saga_cluster.postgres import PostgresPair
from tests.fault.checks import payment
from tests.support.postgres_pair import migrated_database


def _server_port(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT inet_server_port()")).scalar_one())


def _ports_of_concurrent_checkouts(engine: Engine, n: int) -> list[int | BaseException]:
    """Hold n pooled connections at once and ask each which server it is on."""
    results: list[int | BaseException] = []
    barrier = threading.Barrier(n)

    def use() -> None:
        try:
            with engine.connect() as connection:
                barrier.wait(timeout=10)
                results.append(
                    int(connection.execute(text("SELECT inet_server_port()")).scalar_one())
                )
        except BaseException as exc:  # reported, not raised in the thread
            results.append(exc)

    threads = [threading.Thread(target=use) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_one_url_follows_the_promoted_standby(
    pg_pair_factory: Callable[..., PostgresPair],
) -> None:
    pair = pg_pair_factory(synchronous="on")
    url = migrated_database(pair)
    old, new = pair.primary, pair.standby
    engine = create_engine(url, pool_size=4, max_overflow=0)
    orch = Orchestrator(
        load_registry("saga.examples.order_payment"),
        SqlUnitOfWorkFactory(engine),
        transient_errors=TRANSIENT_ERRORS,
    )
    reader = SqlOutboxReader(engine)
    try:
        assert _ports_of_concurrent_checkouts(engine, 4) == [old.port] * 4
        before = orch.enqueue(NAME, payment("failover", 0)).saga_id

        # The relay hears commits through LISTEN on the multi-host URL.
        reader.wait_for_rows(0.1)
        orch.enqueue(NAME, payment("failover", 1))
        assert reader.wait_for_rows(5.0) is True, "no NOTIFY heard: the relay would only poll"

        pair.stop(old, "immediate")
        # Neither server takes writes now (the standby refuses read-write sessions):
        # an outage, retried, not a refusal.
        with pytest.raises(Exception) as gap:
            orch.enqueue(NAME, payment("failover", 2))
        assert is_transient(gap.value), repr(gap.value)

        pair.promote(new)
        failures: list[BaseException] = []
        after = None
        for i in range(5):
            try:
                after = orch.enqueue(NAME, payment("failover", 10 + i)).saga_id
                break
            except Exception as exc:
                assert is_transient(exc), repr(exc)
                failures.append(exc)
        assert after is not None, failures
        # At most the one transaction that met a dead pooled connection fails.
        assert len(failures) <= 1, failures
        # Within the idle-ping window, so only the pool's invalidation can have
        # dropped the other connections to the dead server.
        assert _ports_of_concurrent_checkouts(engine, 4) == [new.port] * 4
        with engine.connect() as connection:
            known = set(connection.execute(select(sagas.c.id)).scalars())
        # Synchronous replication: the saga accepted before the crash survived it.
        assert {before, after} <= known

        # The relay's loop: the first wait finds the listener dead and drops it,
        # the next one listens on the new primary.
        for _ in range(3):
            reader.wait_for_rows(0.1)
        orch.enqueue(NAME, payment("failover", 20))
        assert reader.wait_for_rows(5.0) is True, "LISTEN did not follow the new primary"
        assert _server_port(engine) == new.port
    finally:
        reader.close()
        engine.dispose()


def test_a_primary_fenced_read_only_is_an_outage_not_a_failure(
    pg_pair_factory: Callable[..., PostgresPair],
) -> None:
    """A planned switchover: the primary is fenced read-only, then stopped, the standby promoted.

    Writes the fenced primary refuses are an outage (StoreUnavailable), never a
    step's failure, and the pool drops its sessions there: the next transaction
    opens a new connection (which the read-write URL only lets reach a primary)
    instead of meeting the same read-only session again.
    """
    pair = pg_pair_factory(synchronous="on")
    url = migrated_database(pair)
    old, new = pair.primary, pair.standby
    engine = create_engine(url, pool_size=4, max_overflow=0)
    orch = Orchestrator(
        load_registry("saga.examples.order_payment"),
        SqlUnitOfWorkFactory(engine),
        transient_errors=TRANSIENT_ERRORS,
    )
    try:
        assert _ports_of_concurrent_checkouts(engine, 4) == [old.port] * 4
        with pair.connect(old) as admin:
            admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            admin.execute("SELECT pg_reload_conf()")
        # Existing sessions see the reload at their next statement.
        time.sleep(0.5)
        with pytest.raises(StoreUnavailable) as refused:
            orch.enqueue(NAME, payment("fenced", 0))
        assert "does not take writes" in str(refused.value)
        # No read-only session is reused: the next attempt connects anew and the
        # read-write URL finds no primary (an outage again, at connect).
        with pytest.raises(StoreUnavailable) as again:
            orch.enqueue(NAME, payment("fenced", 1))
        assert "does not take writes" not in str(again.value), again.value

        pair.stop(old, "fast")
        pair.promote(new)
        saga_id = orch.enqueue(NAME, payment("fenced", 2)).saga_id
        assert _server_port(engine) == new.port
        with engine.connect() as connection:
            assert connection.execute(select(sagas.c.id)).scalars().all() == [saga_id]
    finally:
        engine.dispose()
