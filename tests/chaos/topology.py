"""The HA topology of a chaos run (issue 15 item 4): a three-node RabbitMQ cluster and a
PostgreSQL primary with a synchronous standby of the run's own, and the faults they
suffer.

The real Fabric network of an HA run (two Org1 peers, three Raft orderers) is the
run's FabricLedger with `org1_peers=2`; every product process learns both Org1 peers
from the connection profile.

The PostgreSQL failover happens once per run at most: the promoted standby has no
standby of its own and the old primary cannot rejoin without a rebuild
(pg_basebackup or pg_rewind), which this run does not do. A second failover would
have nowhere to go.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from saga.adapters.sql import upgrade
from saga_cluster.postgres import PostgresPair
from saga_cluster.rabbitmq import RabbitCluster
from tests.support.ports import free_ports

# Seconds nothing takes writes between the primary's crash and the promotion (what a
# failover manager's detection takes, shortened).
DETECTION_SECONDS = 2.0


@dataclass
class HaTopology:
    rabbit: RabbitCluster
    postgres: PostgresPair
    database: str
    rabbit_dir: Path
    failed_over: bool = False

    @classmethod
    def start(cls, database: str) -> HaTopology:
        # Not under the run's work directory: the RabbitMQ node names and Erlang cookie
        # path must stay short, and the PostgreSQL pair makes its own folder.
        rabbit_dir = Path(tempfile.mkdtemp(prefix="chaos-rmq-"))
        rabbit: RabbitCluster | None = None
        try:
            rabbit = RabbitCluster.start(rabbit_dir)
            postgres = PostgresPair.create(_two(free_ports(2)), synchronous="on")
        except BaseException:
            if rabbit is not None:
                rabbit.close()
            shutil.rmtree(rabbit_dir, ignore_errors=True)
            raise
        topology = cls(rabbit, postgres, database, rabbit_dir)
        try:
            postgres.create_database(database)
            upgrade(topology.database_url)
        except BaseException:
            topology.close()
            raise
        return topology

    @property
    def broker_url(self) -> str:
        return self.rabbit.broker_url

    @property
    def database_url(self) -> str:
        return self.postgres.database_url(self.database)

    def kill_queue_leader(self, queue: str) -> int:
        """SIGKILL the node leading `queue`; returns its index (for restart_node)."""
        leader = self.rabbit.node_named(self.rabbit.leader(queue)).index
        self.rabbit.kill(leader)
        return leader

    def restart_node(self, index: int) -> None:
        self.rabbit.start_node(index)

    def fail_over(self) -> str:
        """Stop the primary (immediate: a crash to its clients), promote the standby;
        returns 'old -> new'."""
        if self.failed_over:
            raise RuntimeError(
                "the PostgreSQL pair has failed over once already; the old primary needs "
                "a rebuild (pg_basebackup) before it can be a standby again"
            )
        old = self.postgres.primary
        self.postgres.stop(old, "immediate")
        time.sleep(DETECTION_SECONDS)
        self.postgres.promote(self.postgres.standby)
        self.failed_over = True
        return f"{old.name} -> {self.postgres.primary.name}"

    def close(self) -> None:
        try:
            self.rabbit.close()
        finally:
            shutil.rmtree(self.rabbit_dir, ignore_errors=True)
            self.postgres.close()


def _two(ports: list[int]) -> tuple[int, int]:
    return ports[0], ports[1]
