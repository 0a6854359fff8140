"""Pytest plugin: a PostgreSQL primary and streaming standby of our own (failover tests).

The pair comes from tools/saga_cluster/postgres.py (plain processes on free
ports, data in a temporary folder); it is never the machine's shared server on
5432, so a test may crash its primary at will. Creating one costs about three
seconds (initdb, pg_basebackup), so tests ask for it only when they fail over.

    def test_x(pg_pair_factory):
        pair = pg_pair_factory(synchronous="on")   # None: asynchronous replication
        url = migrated_database(pair)              # multi-host, read-write URL
        pair.stop(pair.primary, "immediate"); pair.promote(pair.standby)

Every pair is stopped and its folder removed after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from saga.adapters.sql import upgrade
from saga_cluster.postgres import PostgresPair, SyncLevel
from tests.support.ports import free_ports

DATABASE = "saga"


def migrated_database(pair: PostgresPair, name: str = DATABASE) -> str:
    """A new database on the pair's primary with the store's schema; its multi-host URL."""
    pair.create_database(name)
    url = pair.database_url(name)
    upgrade(url)
    return url


@pytest.fixture
def pg_pair_factory() -> Iterator[Callable[..., PostgresPair]]:
    pairs: list[PostgresPair] = []

    def make(*, synchronous: SyncLevel | None = "on") -> PostgresPair:
        p1, p2 = free_ports(2)
        pair = PostgresPair.create((p1, p2), synchronous=synchronous)
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        pair.close()
