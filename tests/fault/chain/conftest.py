"""Fixtures of the chain crash-point matrix: the module's devnet + sagafacts chaincode,
this test's queues and database, and a `ChainStack` per cell.

A missing PostgreSQL or RabbitMQ FAILS the cell (the plugins in tests/support do
that), never skips it; a devnet or chaincode that cannot start fails the fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from saga.config import Settings
from saga.store import create_engine
from tests.fault.chain.stack import ChainStack, stack_settings
from tests.support.ledger import LedgerNet, sagafacts_net_fixture  # noqa: F401
from tests.support.processes import Processes

MakeStack = Callable[..., ChainStack]


@pytest.fixture
def net(sagafacts_net: LedgerNet) -> Iterator[LedgerNet]:
    """The module's devnet, running and with no fault armed, before and after the cell."""
    devnet = sagafacts_net.devnet
    if devnet.proc is None or devnet.proc.poll() is not None:
        devnet.start()
    devnet.reset_faults()
    yield sagafacts_net
    if devnet.proc is None or devnet.proc.poll() is not None:
        devnet.start()
    devnet.reset_faults()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with Processes(tmp_path / "logs") as processes:
        yield processes


@pytest.fixture
def make_stack(
    broker_settings: Settings,
    pg_url: str,
    net: LedgerNet,
    procs: Processes,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[MakeStack]:
    engines: list[Engine] = []

    def make(**overrides: Any) -> ChainStack:
        settings = stack_settings(broker_settings, net, database_url=pg_url, **overrides)
        engine = create_engine(settings)
        engines.append(engine)
        cell = request.node.name.removeprefix("test_")
        return ChainStack(cell, settings, net, engine, procs, tmp_path / "markers")

    yield make
    procs.stop_all(timeout=10)
    for engine in engines:
        engine.dispose()
