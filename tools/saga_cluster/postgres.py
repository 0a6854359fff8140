"""A PostgreSQL primary and a streaming-replication standby as plain processes.

Test tooling for the failover tests (issue 15, item 2), not the product. Two
clusters on free ports of 127.0.0.1, data under a temporary folder of their own:

- the primary is made by ``initdb`` (trust authentication on loopback only),
  with a physical replication slot for the standby so the primary keeps every
  WAL segment the standby has not received;
- the standby is a ``pg_basebackup -R`` copy of it (``standby.signal`` and
  ``primary_conninfo`` written by ``-R``), streaming through that slot;
- with ``synchronous`` set, the primary's ``synchronous_standby_names`` is
  ``'*'`` and ``synchronous_commit`` that level (``on`` or ``remote_apply``): a
  commit returns only once the standby has it, so promoting the standby loses
  no acknowledged transaction. Without it, replication is asynchronous and a
  promoted standby can lack commits the primary acknowledged.

``stop(node, "immediate")`` is a crash as far as the clients see; ``promote``
turns the standby into the primary. The machine's own cluster (5432) is never
touched: every command names a data folder of this pair.

initdb refuses to run as root, so as root every server command runs as the
``postgres`` account (``runuser``) and the folder is handed to it; as any other
user, the commands run as that user.

    pair = PostgresPair.create(ports=(p1, p2), synchronous="on")
    url = pair.database_url("saga")      # both hosts, target_session_attrs=read-write
    pair.stop(pair.primary, "immediate")
    pair.promote(pair.standby)
    pair.close()                          # both stopped, folder removed
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal, cast

import psycopg

BIN_DIR = Path(os.environ.get("SAGA_PG_BIN_DIR", "/usr/lib/postgresql/15/bin"))
SERVICE_USER = "postgres"
SLOT = "saga_standby"

StopMode = Literal["smart", "fast", "immediate"]
SyncLevel = Literal["on", "remote_apply", "remote_write"]


class ClusterError(RuntimeError):
    """A command of the test deployment failed; the message carries its output and log."""


@dataclass
class PgNode:
    name: str
    port: int
    data_dir: Path
    log_file: Path

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SERVICE_USER}@{self.host}:{self.port}/{database}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class PostgresPair:
    """A primary and its standby; which is which changes with promote()."""

    def __init__(
        self,
        base_dir: Path,
        ports: tuple[int, int],
        *,
        synchronous: SyncLevel | None = None,
        bin_dir: Path = BIN_DIR,
    ) -> None:
        self.base_dir = base_dir
        self.bin_dir = bin_dir
        self.synchronous = synchronous
        self.nodes = [
            PgNode(name, port, base_dir / name, base_dir / f"{name}.log")
            for name, port in zip(("pg-a", "pg-b"), ports, strict=True)
        ]
        self.primary, self.standby = self.nodes

    # -- building -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        ports: tuple[int, int],
        *,
        synchronous: SyncLevel | None = None,
        bin_dir: Path = BIN_DIR,
    ) -> PostgresPair:
        """Make and start both servers; the standby streaming (in sync if asked)."""
        if not (bin_dir / "initdb").exists():
            raise ClusterError(
                f"PostgreSQL server binaries not found in {bin_dir} (no initdb there): "
                "install the server package (Debian: postgresql-15) or set SAGA_PG_BIN_DIR "
                "to the folder holding initdb, pg_ctl and pg_basebackup"
            )
        # Not under pytest's tmp_path: its 0700 parents keep the postgres account out.
        base = Path(tempfile.mkdtemp(prefix="saga-pg-"))
        pair = cls(base, ports, synchronous=synchronous, bin_dir=bin_dir)
        try:
            pair._hand_over(base)
            pair._init_primary()
            pair._clone_standby()
            pair.wait_streaming()
        except BaseException:
            pair.close()
            raise
        return pair

    def _init_primary(self) -> None:
        node = self.primary
        # -N: no fsync during initdb; the servers below fsync as usual.
        self._run(
            "initdb",
            "-D",
            str(node.data_dir),
            "-U",
            SERVICE_USER,
            "--auth=trust",
            "-N",
            "-E",
            "UTF8",
        )
        (node.data_dir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "local replication all trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.base_dir}'",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "max_replication_slots": "5",
            "hot_standby": "on",
            "max_connections": "200",
            "shared_buffers": "32MB",
            # The standby reconnects within a second after a hiccup, and a dead
            # walsender is noticed quickly (both only speed the tests up).
            "wal_receiver_status_interval": "1s",
            "wal_sender_timeout": "10s",
            "logging_collector": "off",
            "cluster_name": "'pg-a'",
        }
        if self.synchronous is not None:
            settings["synchronous_standby_names"] = "'*'"
            settings["synchronous_commit"] = self.synchronous
        _append_conf(node.data_dir, settings)
        self._chown(node.data_dir)
        self.start(node)
        with self.connect(node) as conn:
            conn.execute(f"SELECT pg_create_physical_replication_slot('{SLOT}')")

    def _clone_standby(self) -> None:
        primary, standby = self.primary, self.standby
        self._run(
            "pg_basebackup",
            "-h", primary.host, "-p", str(primary.port), "-U", SERVICE_USER,
            "-D", str(standby.data_dir), "-R", "-S", SLOT, "-X", "stream", "-c", "fast",
        )  # fmt: skip
        # postgresql.conf came with the copy: only the port differs. cluster_name is
        # the walreceiver's application_name, which pg_stat_replication shows.
        _append_conf(standby.data_dir, {"port": str(standby.port), "cluster_name": "'pg-b'"})
        self.start(standby)

    # -- process control ------------------------------------------------------

    def start(self, node: PgNode, timeout: float = 60.0) -> None:
        self._run(
            "pg_ctl", "-D", str(node.data_dir), "-l", str(node.log_file),
            "-o", f"-p {node.port}", "-w", "-t", str(int(timeout)), "start",
        )  # fmt: skip

    def stop(self, node: PgNode, mode: StopMode = "fast", timeout: float = 60.0) -> None:
        """Stop a server; "immediate" is a crash to its clients (no shutdown checkpoint)."""
        if not self.running(node):
            return
        self._run(
            "pg_ctl", "-D", str(node.data_dir), "-m", mode, "-w", "-t", str(int(timeout)), "stop"
        )

    def running(self, node: PgNode) -> bool:
        pid_file = node.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's process
            return True
        return True

    def promote(self, node: PgNode, timeout: float = 60.0, *, keep_sync: bool = False) -> None:
        """Make `node` the primary (pg_ctl promote), and wait until it takes writes.

        The promoted server has no standby of its own. With the synchronous
        setting it inherited from the copy, every commit would wait forever for
        one; unless `keep_sync`, it is cleared as an operator must (ALTER SYSTEM,
        reload) until a new standby is attached.
        """
        self._run("pg_ctl", "-D", str(node.data_dir), "-w", "-t", str(int(timeout)), "promote")
        deadline = time.monotonic() + timeout
        while not self._takes_writes(node):
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} still read-only after promote\n{node.log_tail()}")
            time.sleep(0.1)
        if not keep_sync:
            with self.connect(node) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
                conn.execute("SELECT pg_reload_conf()")
        self.primary, self.standby = node, next(n for n in self.nodes if n is not node)

    def _takes_writes(self, node: PgNode) -> bool:
        try:
            with self.connect(node) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                return row is not None and not row[0]
        except psycopg.Error:
            return False

    def close(self) -> None:
        """Stop both servers (immediate: nothing to keep) and remove the folder."""
        for node in self.nodes:
            with contextlib.suppress(ClusterError):
                self.stop(node, "immediate", timeout=30)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- what the servers say -------------------------------------------------

    def connect(self, node: PgNode, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(node.dsn(database), autocommit=True, connect_timeout=5)

    def database_url(self, database: str, *, driver: str = "postgresql") -> str:
        """Both servers in one URL; libpq picks whichever takes writes.

        The SQLAlchemy form (repeated ``host=h:p``), which saga.adapters.sql turns
        into libpq's comma lists for psycopg.
        """
        hosts = "&".join(f"host={n.host}:{n.port}" for n in self.nodes)
        return f"{driver}://{SERVICE_USER}@/{database}?{hosts}&target_session_attrs=read-write"

    def create_database(self, name: str) -> None:
        with self.connect(self.primary) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def replication(self) -> list[tuple[str, str, str]]:
        """(application_name, state, sync_state) of each standby the primary streams to."""
        with self.connect(self.primary) as conn:
            rows = conn.execute(
                "SELECT application_name, state, sync_state FROM pg_stat_replication"
            ).fetchall()
        return [(str(a), str(s), str(y)) for a, s, y in rows]

    def wait_streaming(self, timeout: float = 60.0) -> None:
        """Wait until the standby streams (and, if synchronous, is the sync standby)."""
        want = "sync" if self.synchronous else "async"
        deadline = time.monotonic() + timeout
        while True:
            try:
                if any(s == "streaming" and y == want for _, s, y in self.replication()):
                    return
            except psycopg.Error:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"standby {self.standby.name} not streaming ({want}) after {timeout}s\n"
                    f"{self.standby.log_tail()}"
                )
            time.sleep(0.2)

    def wait_replayed(self, timeout: float = 60.0) -> None:
        """Wait until the standby has applied everything the primary has written so far."""
        with self.connect(self.primary) as conn:
            deadline = time.monotonic() + timeout
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
            assert target is not None
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn >= %s",
                    (target[0],),
                ).fetchone()
                if row is not None and row[0] > 0:
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(f"standby has not replayed {target[0]} after {timeout}s")
                time.sleep(0.1)

    # -- plumbing -------------------------------------------------------------

    def _hand_over(self, path: Path) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVICE_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _chown(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        account = pwd.getpwnam(SERVICE_USER)
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), account.pw_uid, account.pw_gid)
        os.chown(path, account.pw_uid, account.pw_gid)

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> str:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{' '.join(command)} timed out after {timeout}s") from exc
        if done.returncode != 0:
            logs = "\n".join(f"--- {n.name} log\n{n.log_tail()}" for n in self.nodes)
            raise ClusterError(
                f"{' '.join(command)} exited {done.returncode}\n{done.stdout}{done.stderr}\n{logs}"
            )
        return done.stdout


def _append_conf(data_dir: Path, settings: dict[str, str]) -> None:
    # Later lines win in postgresql.conf, so appending overrides initdb's defaults.
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\n# saga_cluster.postgres\n")
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")


def _free_ports(count: int) -> tuple[int, ...]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return tuple(int(sock.getsockname()[1]) for sock in socks)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saga_cluster.postgres",
        description="A PostgreSQL primary and streaming standby on 127.0.0.1 for failover tests",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start both servers and keep them until SIGINT/SIGTERM")
    up.add_argument(
        "--sync",
        choices=["on", "remote_apply", "remote_write", "async"],
        default="on",
        help="synchronous_commit on the primary, or async replication (default: on)",
    )
    up.add_argument("--database", default="saga", help="database to create (default: saga)")
    opts = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)
    ports = _free_ports(2)
    level = None if opts.sync == "async" else cast(SyncLevel, opts.sync)
    pair = PostgresPair.create((ports[0], ports[1]), synchronous=level)
    try:
        pair.create_database(opts.database)
        print(f"SAGA_DATABASE_URL='{pair.database_url(opts.database)}'", flush=True)
        for node in pair.nodes:
            role = "primary" if node is pair.primary else "standby"
            print(f"{node.name} {role} port={node.port} data={node.data_dir}", flush=True)
        print(
            f"promote: runuser -u {SERVICE_USER} -- {pair.bin_dir / 'pg_ctl'} -D "
            f"{pair.standby.data_dir} promote",
            flush=True,
        )
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        pair.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
