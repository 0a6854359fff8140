"""Fixtures of the chain crash-point matrix: the ledger a cell runs on (the devnet, or a
real Fabric 2.5 network), this test's queues and database, and a `ChainStack` per cell.

Which ledger: every cell runs on the devnet; a cell marked
`@pytest.mark.ledgers("devnet", "fabric")` runs on real Fabric 2.5 as well (its id
says which: `test_x[fabric-...]`), `@pytest.mark.ledgers("fabric")` only there. The
devnet is the module's (tests/support/ledger.py); the real network is ONE for the
whole package (three Raft orderers, peer0.org1, peer0.org2, sagafacts as a service,
0.5 s blocks), started by the first cell that needs it: bringing a network up costs
about as much as five cells. test_matrix_outages.py lists which cell runs where.

Which runner runs the chain steps: a `saga worker` (the default), or, for a cell marked
`@pytest.mark.runners("worker", "chain-executor")`, also `saga chain-executor` (its id
says which: `test_x[devnet-chain-executor]`): the relay then routes chain steps to the
executor's queue, a plain worker runs the local steps, and the failpoints are armed in
the executor, which runs several chain steps at once on threads. To keep the default
suite's time, the executor's cells run there on the devnet only, and not for cells
marked `full_only=True`; `SAGA_CHAIN_MATRIX_FULL=1` runs every ledger x runner.

A missing PostgreSQL, RabbitMQ or Fabric binary FAILS the cell (the plugins in
tests/support do that), never skips it; a ledger that cannot start fails the fixture.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from saga.adapters.sql import create_engine
from saga.config import Settings
from tests.fault.chain.stack import ChainLedger, ChainStack, stack_settings
from tests.support.fabricnet import RealLedgerNet, fabric_release, real_network
from tests.support.ledger import LedgerNet
from tests.support.processes import Processes
from tests.support.rabbitmq import delete_queue

MakeStack = Callable[..., ChainStack]
LEDGERS = ("devnet", "fabric")
RUNNERS = ("worker", "chain-executor")
FULL_ENV = "SAGA_CHAIN_MATRIX_FULL"
# After a cell, a real network must endorse with both orgs and have a Raft leader
# within this long; a restarted peer needs ~1 s, a new Raft election ~5 s.
FABRIC_READY_TIMEOUT = 90.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ledgers(*names): the ledgers a chain matrix cell runs on (devnet, fabric)"
    )
    config.addinivalue_line(
        "markers",
        "runners(*names): what runs a cell's chain steps (worker, chain-executor)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ledger" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("ledgers")
    ledgers = tuple(marker.args) if marker else ("devnet",)
    unknown = set(ledgers) - set(LEDGERS)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown ledgers {unknown}")
    runners_marker = metafunc.definition.get_closest_marker("runners")
    if runners_marker is None:
        metafunc.parametrize("ledger", ledgers, indirect=True)
        return
    runners = tuple(runners_marker.args)
    unknown = set(runners) - set(RUNNERS)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown runners {unknown}")
    # The default suite runs the chain executor's cells on the devnet, and only those
    # not marked full_only; SAGA_CHAIN_MATRIX_FULL=1 runs every ledger x runner.
    full = os.environ.get(FULL_ENV) == "1"
    pairs = [
        (ledger, runner)
        for ledger in ledgers
        for runner in runners
        if runner == "worker"
        or full
        or (ledger == "devnet" and not runners_marker.kwargs.get("full_only", False))
    ]
    # A worker cell keeps the id it had before there were runners ("devnet").
    ids = [ledger if runner == "worker" else f"{ledger}-{runner}" for ledger, runner in pairs]
    metafunc.parametrize(("ledger", "runner"), pairs, ids=ids, indirect=True)


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> str:
    """The ledger this cell runs on, "devnet" or "fabric" (set by pytest_generate_tests)."""
    return str(request.param)


@pytest.fixture
def runner(request: pytest.FixtureRequest) -> str:
    """What runs the cell's chain steps: "worker" unless the cell is marked `runners`."""
    return str(getattr(request, "param", "worker"))


@pytest.fixture(scope="package")
def fabric_chain_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealLedgerNet]:
    # fabric_release() fails the cell (never skips) when the binaries are missing.
    release = fabric_release()
    with real_network(tmp_path_factory.mktemp("fabric-chain"), release) as net:
        yield net


def _fabric_whole(net: RealLedgerNet, *, probe: bool) -> None:
    """Every member running and the network usable: a cell that failed half-way
    through an outage must not hand the next cell a network with a member down.
    `probe`: wait for a Raft leader and an endorsement by both orgs even when every
    member runs (after a cell, which may have restarted one); before a cell that is
    only needed if a member had to be started."""
    network = net.network
    down = [m for m in network.members if not network.running(m)]
    for member in down:
        network.start(member)
    if down or probe:
        network.wait_ready(timeout=FABRIC_READY_TIMEOUT)


@pytest.fixture
def net(ledger: str, request: pytest.FixtureRequest) -> Iterator[ChainLedger]:
    """The cell's ledger, running and with no fault armed, before and after the cell."""
    if ledger == "fabric":
        real: RealLedgerNet = request.getfixturevalue("fabric_chain_net")
        _fabric_whole(real, probe=False)
        yield real
        _fabric_whole(real, probe=True)
        return
    sagafacts_net: LedgerNet = request.getfixturevalue("sagafacts_net")
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
    net: ChainLedger,
    procs: Processes,
    tmp_path: Path,
    runner: str,
    request: pytest.FixtureRequest,
) -> Iterator[MakeStack]:
    engines: list[Engine] = []
    chain_queue = f"{broker_settings.step_queue}.chain" if runner == "chain-executor" else ""

    def make(**overrides: Any) -> ChainStack:
        overrides.setdefault("chain_queue", chain_queue)
        settings = stack_settings(broker_settings, net, database_url=pg_url, **overrides)
        engine = create_engine(settings)
        engines.append(engine)
        cell = request.node.name.removeprefix("test_")
        return ChainStack(cell, settings, net, engine, procs, tmp_path / "markers")

    yield make
    procs.stop_all(timeout=10)
    for engine in engines:
        engine.dispose()
    if chain_queue:
        delete_queue(broker_settings.broker_url, chain_queue)
