"""A three-node RabbitMQ cluster on 127.0.0.1, each node a plain process.

    cluster = RabbitCluster.start(Path("/tmp/x"))   # sagaha<N>1..3@localhost, joined
    cluster.broker_url        # "amqp://...:p1//;amqp://...:p2//;amqp://...:p3//"
    cluster.leader("saga.steps")                     # the node leading a quorum queue
    cluster.stop(1); cluster.start_node(1)          # graceful stop, start again
    cluster.kill(2); cluster.restart(2)             # SIGKILL, start again
    cluster.close()                                  # every node down, nothing left

From a shell: `python -m saga_cluster.rabbitmq up --dir /tmp/rmq` starts one and
keeps it until SIGINT/SIGTERM, printing SAGA_BROKER_URL; `/tmp/rmq/env.sh` sets
the environment under which `rabbitmqctl -n <node> ...` reaches its nodes
(``. /tmp/rmq/env.sh; rabbitmqctl -n sagahaXn1@localhost list_queues name leader``).

The machine's own RabbitMQ (rabbit@localhost on 5672, started by its init
system) is never touched:

- the nodes are named ``<prefix><n>@localhost`` with a prefix of their own per
  cluster, and only ever join each other (``join_cluster`` names the first node);
- every command runs the scripts under /usr/lib/rabbitmq/bin directly, not the
  /usr/sbin wrappers, which switch to the rabbitmq user and so to the system
  node's home and Erlang cookie;
- HOME points into the cluster's directory, which holds the cluster's own
  ``.erlang.cookie``: neither /var/lib/rabbitmq/.erlang.cookie (the system
  node's) nor the caller's ~/.erlang.cookie is read or written;
- RABBITMQ_CONF_ENV_FILE, RABBITMQ_CONFIG_FILE and RABBITMQ_ADVANCED_CONFIG_FILE
  point into the cluster's directory, so /etc/rabbitmq (NODENAME=rabbit@localhost,
  a listener on 5672) is not read either.

The nodes share the machine's epmd (127.0.0.1:4369), which only maps names to
distribution ports; every node's AMQP and distribution ports come from free
ports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

# The scripts themselves: /usr/sbin/rabbitmqctl is a wrapper that `su`s to the
# rabbitmq user, whose HOME holds the system node's cookie.
RABBITMQ_BIN = Path(os.environ.get("SAGA_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
HOST = "127.0.0.1"
NODES = 3


class ClusterError(RuntimeError):
    """A node did not start, join or answer; the message names its log."""


# rabbitmqctl's own distribution ports (RABBITMQ_CTL_DIST_PORT_MIN..MAX): every
# CLI call, ours and the system node's, listens on one of them for a moment.
CLI_PORTS = range(35672, 35683)


def _free_ports(count: int) -> list[int]:
    for _ in range(50):
        # Each socket stays bound until all are chosen, so no port is handed out twice.
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.socket()) for _ in range(count)]
            for s in socks:
                s.bind((HOST, 0))
            ports = [int(s.getsockname()[1]) for s in socks]
        if not any(port in CLI_PORTS for port in ports):
            return ports
    raise ClusterError(f"no {count} free ports outside {CLI_PORTS} after 50 tries")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class RabbitNode:
    index: int
    name: str
    amqp_port: int
    dist_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.amqp_port}//"

    @property
    def log_file(self) -> Path:
        return self.directory / "console.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class RabbitCluster:
    """Three RabbitMQ nodes joined into one cluster; see the module docstring."""

    def __init__(self, base: Path, prefix: str | None = None) -> None:
        self.base = base
        self.prefix = prefix or f"sagaha{secrets.token_hex(2)}n"
        self.home = base / "home"
        # One call: ports chosen in two calls could repeat.
        ports = _free_ports(2 * NODES)
        amqp, dist = ports[:NODES], ports[NODES:]
        self.nodes = [
            RabbitNode(
                index=i + 1,
                name=f"{self.prefix}{i + 1}@localhost",
                amqp_port=amqp[i],
                dist_port=dist[i],
                directory=base / f"node{i + 1}",
            )
            for i in range(NODES)
        ]

    # -- whole cluster ---------------------------------------------------------

    @classmethod
    def start(cls, base: Path, prefix: str | None = None, timeout: float = 120.0) -> RabbitCluster:
        """Start three nodes and join the second and third to the first."""
        cluster = cls(base, prefix)
        try:
            cluster._prepare()
            for node in cluster.nodes:
                cluster._spawn(node)
            for node in cluster.nodes:
                cluster.await_node(node.index, timeout)
            first = cluster.nodes[0].name
            for node in cluster.nodes[1:]:
                cluster.ctl(node.index, "stop_app")
                cluster.ctl(node.index, "join_cluster", first)
                cluster.ctl(node.index, "start_app")
            for node in cluster.nodes:
                cluster.await_node(node.index, timeout)
        except BaseException:
            cluster.close()
            raise
        return cluster

    @property
    def broker_url(self) -> str:
        """Every node's AMQP URL, `;`-separated: the product's broker URL list."""
        return ";".join(node.url for node in self.nodes)

    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, index: int) -> RabbitNode:
        return self.nodes[index - 1]

    def node_named(self, name: str) -> RabbitNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"{name!r} is not a node of this cluster ({self.names()})")

    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def running_nodes(self) -> list[str]:
        """The cluster's running members, as a live node reports them."""
        node = self._any_running()
        out = self.ctl(node.index, "eval", "rabbit_nodes:all_running().")
        return sorted(re.findall(r"'?([\w.-]+@[\w.-]+)'?", out))

    def close(self) -> None:
        """Kill every node (the data is thrown away with the directory)."""
        for node in self.nodes:
            self.kill(node.index)

    # -- one node --------------------------------------------------------------

    def stop(self, index: int, timeout: float = 60.0) -> None:
        """Stop a node gracefully (rabbitmqctl stop): it hands its leaderships over."""
        node = self.node(index)
        if not node.running:
            return
        try:
            self.ctl(index, "stop", timeout=timeout)
        except ClusterError:
            self.kill(index)
            return
        assert node.process is not None
        try:
            node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(index)

    def kill(self, index: int) -> None:
        """SIGKILL a node's process group: the node dies as a crashed machine would."""
        node = self.node(index)
        process, node.process = node.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)

    def start_node(self, index: int, timeout: float = 120.0) -> None:
        """Start a stopped node again; it rejoins the cluster from its own data."""
        node = self.node(index)
        if node.running:
            return
        self._spawn(node)
        self.await_node(index, timeout)

    def restart(self, index: int, timeout: float = 120.0) -> None:
        self.stop(index)
        self.start_node(index, timeout)

    def await_node(self, index: int, timeout: float = 120.0) -> None:
        """Wait until the node runs the rabbit application and listens for AMQP."""
        node = self.node(index)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.running:
                raise ClusterError(f"node {node.name} exited; see {node.log_file}")
            try:
                self.ctl(index, "await_startup", "--timeout", "5", timeout=15)
            except ClusterError:
                time.sleep(0.5)
                continue
            if _listening(node.amqp_port):
                return
            time.sleep(0.2)
        raise ClusterError(f"node {node.name} did not start in {timeout:.0f}s; see {node.log_file}")

    # -- queues ----------------------------------------------------------------

    def leader(self, queue: str, vhost: str = "/") -> str:
        """The node that leads a quorum queue (its name, e.g. sagahaXn1@localhost)."""
        node = self._any_running()
        out = self.ctl(
            node.index, "list_queues", "-p", vhost, "name", "leader", "--no-table-headers", "-q"
        )
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[0] == queue and parts[1]:
                return parts[1].strip()
        raise ClusterError(f"queue {queue!r} has no leader in {out!r} (is it a quorum queue?)")

    def members(self, queue: str, vhost: str = "/") -> list[str]:
        """The nodes that hold a replica of a quorum queue."""
        node = self._any_running()
        out = self.ctl(
            node.index, "list_queues", "-p", vhost, "name", "members", "--no-table-headers", "-q"
        )
        for line in out.splitlines():
            parts = line.split("\t", 1)
            if len(parts) == 2 and parts[0] == queue:
                return sorted(re.findall(r"[\w.-]+@[\w.-]+", parts[1]))
        raise ClusterError(f"queue {queue!r} not found on {node.name}")

    # -- commands --------------------------------------------------------------

    def env(self, node: RabbitNode | None = None) -> dict[str, str]:
        """The environment of the node's server (or of a CLI command, without node)."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=str(self.home),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            ERL_EPMD_ADDRESS=HOST,
        )
        if node is not None:
            d = node.directory
            env.update(
                RABBITMQ_NODENAME=node.name,
                RABBITMQ_NODE_IP_ADDRESS=HOST,
                RABBITMQ_NODE_PORT=str(node.amqp_port),
                RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
                RABBITMQ_LOG_BASE=str(d / "log"),
                RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
                RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            )
        return env

    def ctl(self, index: int, *args: str, timeout: float = 60.0) -> str:
        """Run `rabbitmqctl -n <node> args...`; return its output."""
        return self._run("rabbitmqctl", self.node(index), args, timeout)

    def queues(self, index: int, *args: str, timeout: float = 60.0) -> str:
        """Run `rabbitmq-queues -n <node> args...`; return its output."""
        return self._run("rabbitmq-queues", self.node(index), args, timeout)

    def _run(self, tool: str, node: RabbitNode, args: Sequence[str], timeout: float) -> str:
        argv = [str(RABBITMQ_BIN / tool), "-n", node.name, *args]
        try:
            done = subprocess.run(
                argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{' '.join(argv)} did not answer in {timeout:.0f}s") from exc
        if done.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}; see {node.log_file}"
            )
        return done.stdout

    def _any_running(self) -> RabbitNode:
        for node in self.nodes:
            if node.running:
                return node
        raise ClusterError("no node of the cluster is running")

    def _prepare(self) -> None:
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise ClusterError(
                f"no RabbitMQ server scripts in {RABBITMQ_BIN}; install the rabbitmq-server "
                "package or point SAGA_RABBITMQ_BIN at its bin directory"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        # Erlang refuses a cookie file others can read.
        cookie.chmod(0o400)
        # Empty on purpose: /etc/rabbitmq/rabbitmq-env.conf names the system node.
        (self.base / "rabbitmq-env.conf").write_text("")
        env = self.env()
        (self.base / "env.sh").write_text(
            "# . this file, then: rabbitmqctl -n <node> ...  (this cluster's cookie and tools)\n"
            + "".join(
                f"export {key}={env[key]}\n"
                for key in ("HOME", "RABBITMQ_CONF_ENV_FILE", "ERL_EPMD_ADDRESS")
            )
            + f"export PATH={RABBITMQ_BIN}:$PATH\n"
        )
        (self.base / "cluster.json").write_text(
            json.dumps(
                {
                    "broker_url": self.broker_url,
                    "nodes": [
                        {"name": n.name, "amqp_port": n.amqp_port, "dist_port": n.dist_port}
                        for n in self.nodes
                    ],
                },
                indent=2,
            )
        )
        for node in self.nodes:
            d = node.directory
            (d / "mnesia").mkdir(parents=True, exist_ok=True)
            (d / "log").mkdir(parents=True, exist_ok=True)
            # No plugins: the cluster serves AMQP only (no management UI, no Prometheus).
            (d / "enabled_plugins").write_text("[].\n")
            (d / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = {HOST}:{node.amqp_port}\n"
                "log.console = true\n"
                "log.console.level = info\n"
                "log.file = false\n"
                # A node that comes back syncs from the others; no waiting on
                # peers that are down when the whole cluster restarts.
                "cluster_partition_handling = pause_minority\n"
            )

    def _spawn(self, node: RabbitNode) -> None:
        if node.running:
            return
        if _listening(node.amqp_port):
            raise ClusterError(
                f"port {node.amqp_port} of {node.name} is taken by another process; "
                "start a new cluster (its ports are chosen afresh)"
            )
        log = node.log_file.open("ab")
        try:
            node.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self.env(node),
                cwd=node.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: kill() takes the shell, beam and epmd
                # helpers of this node only.
                start_new_session=True,
            )
        finally:
            log.close()


def remove(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saga_cluster.rabbitmq",
        description="A three-node RabbitMQ cluster on 127.0.0.1 for HA tests",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster and keep it until SIGINT/SIGTERM")
    up.add_argument("--dir", type=Path, required=True, help="data, logs, cookie (made afresh)")
    opts = parser.parse_args(argv)
    if opts.dir.exists() and any(opts.dir.iterdir()):
        parser.error(f"{opts.dir} is not empty: give a new directory (a cluster's data is its own)")
    signal.signal(signal.SIGTERM, _raise_exit)
    cluster = RabbitCluster.start(opts.dir)
    try:
        print(f"SAGA_BROKER_URL='{cluster.broker_url}'", flush=True)
        for node in cluster.nodes:
            print(f"{node.name} amqp={node.amqp_port} log={node.log_file}", flush=True)
        print(f"rabbitmqctl: . {opts.dir / 'env.sh'}; rabbitmqctl -n <node> ...", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
