"""The HA runbooks' commands run, as written, against the HA test deployment.

runbooks/rabbitmq-node-lost.md and runbooks/postgres-primary-lost.md, with the
conventions of test_runbooks.py (situations, `# exits N`, the saga that must
end), on a three-node RabbitMQ cluster and a PostgreSQL primary with a
synchronous standby started once for the module (tools/saga_cluster), a devnet
with the sagafacts chaincode, and the product's processes given every member.
The situations (tests/support/runbook_ha.py) kill the node leading the step
queue and crash the primary; the runbooks' own commands promote the standby.
About 90 s on this machine, most of it the cluster's start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from saga.adapters.rabbitmq.topology import declare_topology
from saga_cluster.postgres import PostgresPair
from saga_cluster.rabbitmq import RabbitCluster
from tests.support.ledger import LedgerNet
from tests.support.ports import free_ports
from tests.support.postgres_pair import DATABASE, migrated_database
from tests.support.processes import Processes
from tests.support.runbook_deployment import Deployment
from tests.support.runbook_ha import HA_RUNBOOKS, HaSituations, Members
from tests.support.runbook_situations import run_runbook


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Members]:
    base: Path = tmp_path_factory.mktemp("rabbit-cluster")
    cluster = RabbitCluster.start(base)
    try:
        p1, p2 = free_ports(2)
        pair = PostgresPair.create((p1, p2), synchronous="on")
        try:
            yield Members(cluster, pair)
        finally:
            pair.close()
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def ha_deployment(
    members: Members, sagafacts_net: LedgerNet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    url = migrated_database(members.pair)
    work = tmp_path_factory.mktemp("runbooks-ha")
    d = Deployment.build(
        url, members.cluster.broker_url, sagafacts_net, work, Processes(work / "logs")
    )
    # Declared while the three nodes run: a replica of each quorum queue on each.
    declare_topology(d.settings)
    try:
        yield d
    finally:
        d.close()


@pytest.mark.parametrize("runbook", HA_RUNBOOKS)
def test_ha_runbook_commands_run(runbook: str, ha_deployment: Deployment, members: Members) -> None:
    run_runbook(runbook, ha_deployment, HaSituations(ha_deployment, members, DATABASE))
