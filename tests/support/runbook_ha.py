"""The HA runbooks' situations: a member of the RabbitMQ cluster or of the PostgreSQL
pair lost, and brought back.

The deployment is the runbooks' own (tests/support/runbook_deployment.py) on a
three-node RabbitMQ cluster (tools/saga_cluster/rabbitmq.py) and a PostgreSQL
primary with a synchronous standby (tools/saga_cluster/postgres.py), each
process given every member (`;`-separated broker URLs, a multi-host database URL
with target_session_attrs=read-write). A situation takes a member away as the
fault tests do (SIGKILL of the node leading the step queue, an immediate stop of
the primary), with a saga in flight that must still complete; a hook brings the
member back the way the runbook's ```console block says (the server commands
need the broker's or database's own host and account).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from saga.core.state import SagaStatus
from saga.examples import order_payment
from saga_cluster.postgres import PgNode, PostgresPair
from saga_cluster.rabbitmq import RABBITMQ_BIN, RabbitCluster
from tests.support.runbook_deployment import Deployment
from tests.support.runbook_situations import Situations, payment

# Run by tests/integration/test_runbooks_ha.py, not by test_runbooks.py.
HA_RUNBOOKS = ("rabbitmq-node-lost.md", "postgres-primary-lost.md")


@dataclass
class Members:
    cluster: RabbitCluster
    pair: PostgresPair


def conninfo(node: PgNode, database: str) -> str:
    """One server, as psql takes it (the operator's PG_* variables)."""
    return f"host={node.host} port={node.port} user=postgres dbname={database}"


class HaSituations(Situations):
    def __init__(self, deployment: Deployment, members: Members, database: str) -> None:
        super().__init__(deployment)
        self.m = members
        self.database = database
        self.builders.update(
            {
                "ha-healthy": self.ha_healthy,
                "rabbit-node-lost": self.rabbit_node_lost,
                "rabbit-node-back": self.rabbit_node_back,
                "pg-primary-lost": self.pg_primary_lost,
                "pg-standby-rebuilt": self.pg_standby_rebuilt,
            }
        )
        self.hooks.update(
            {
                "rabbit-node-back": self._bring_node_back,
                "pg-primary-lost": self._lose_primary,
                "pg-standby-rebuilt": self._rebuild_old_primary,
            }
        )
        self._lost_node = 0
        self._lost_primary: PgNode | None = None

    def _rabbit(self) -> dict[str, str]:
        """rabbitmqctl reaching this cluster: its scripts (not /usr/sbin's wrappers,
        which switch to the system node's account) and its cookie's HOME."""
        env = self.m.cluster.env()
        live = next(n for n in self.m.cluster.nodes if n.running)
        return {
            "PATH": f"{RABBITMQ_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": env["HOME"],
            "RABBITMQ_CONF_ENV_FILE": env["RABBITMQ_CONF_ENV_FILE"],
            "ERL_EPMD_ADDRESS": env["ERL_EPMD_ADDRESS"],
            "RABBIT_NODE": live.name,
        }

    def _in_flight(self, tag: str) -> str:
        """A saga stored with its first message in the outbox (no relay runs yet)."""
        saga_id = self.orchestrator().enqueue(order_payment.NAME, payment(tag)).saga_id
        self._expect(saga_id, SagaStatus.COMPLETED)
        return saga_id

    def ha_healthy(self) -> dict[str, str]:
        pair = self.m.pair
        return {
            **self.healthy(),
            **self._rabbit(),
            "PG_PRIMARY": conninfo(pair.primary, self.database),
            "PG_STANDBY": conninfo(pair.standby, self.database),
        }

    # -- RabbitMQ ----------------------------------------------------------------------

    def rabbit_node_lost(self) -> dict[str, str]:
        """The node leading the step queue killed; a saga in flight must complete."""
        cluster = self.m.cluster
        leader = cluster.node_named(cluster.leader(self.d.settings.step_queue))
        self._lost_node = leader.index
        cluster.kill(leader.index)
        saga_id = self._in_flight("rmq-lost")
        return {**self._rabbit(), "LOST_NODE": leader.name, "SAGA_ID": saga_id}

    def rabbit_node_back(self) -> dict[str, str]:
        assert self._lost_node, "rabbit-node-back follows rabbit-node-lost"
        lost = self.m.cluster.node(self._lost_node)
        return {**self._rabbit(), "LOST_NODE": lost.name, "SAGA_ID": self._in_flight("rmq-back")}

    def _bring_node_back(self) -> None:
        self.m.cluster.start_node(self._lost_node)

    # -- PostgreSQL --------------------------------------------------------------------

    def pg_primary_lost(self) -> dict[str, str]:
        """The primary stopped in immediate mode right before the first block (a crash
        to its clients); a saga accepted before it must complete on the promoted standby."""
        pair = self.m.pair
        self._lost_primary = pair.primary
        return {
            "SAGA_ID": self._in_flight("pg-lost"),
            "PG_LOST": conninfo(pair.primary, self.database),
            "PG_STANDBY": conninfo(pair.standby, self.database),
        }

    def _lose_primary(self) -> None:
        assert self._lost_primary is not None
        self.m.pair.stop(self._lost_primary, "immediate")

    def pg_standby_rebuilt(self) -> dict[str, str]:
        """The old primary, rebuilt as the standby of the promoted one."""
        pair = self.m.pair
        assert self._lost_primary is not None, "pg-standby-rebuilt follows pg-primary-lost"
        new = next(n for n in pair.nodes if n is not self._lost_primary)
        return {
            "SAGA_ID": self._in_flight("pg-rebuilt"),
            "PG_PRIMARY": conninfo(new, self.database),
            "PG_STANDBY": conninfo(self._lost_primary, self.database),
        }

    def _rebuild_old_primary(self) -> None:
        """What the runbook's console block does on the old primary's host: throw its
        data away and copy the new primary (pg_basebackup -R through the slot), start."""
        pair, old = self.m.pair, self._lost_primary
        assert old is not None
        if pair.primary is old:
            pair.primary, pair.standby = pair.standby, old
        if pair.running(old):
            return
        shutil.rmtree(old.data_dir)
        pair._clone_standby()
