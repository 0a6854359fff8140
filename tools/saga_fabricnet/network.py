"""A real Fabric test network: three etcdraft orderers (or four BFT ones on Fabric 3),
one peer for each of Org1 and Org2 (or more for Org1: ``NetworkOptions(org1_peers=2)``),
channel ``mychannel`` and the sagafacts chaincode as a service, all plain processes on 127.0.0.1.

    net = FabricNetwork(Path("/tmp/net"), FabricRelease.locate(folder=".fabric/fabric-2.5.16"))
    seconds = net.up()          # from nothing to "both orgs endorse"
    net.kill("peer0.org2"); net.start("peer0.org2"); net.wait_endorsable()
    net.raft_leader()           # "orderer1"
    net.down()
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

from saga.adapters.fabric import GatewayClient
from saga_fabricnet import chaincode_package, configtx, material, nodes, peer_config, probes
from saga_fabricnet.admin import Admin
from saga_fabricnet.material import Layout, Org
from saga_fabricnet.options import NetworkOptions
from saga_fabricnet.processes import MemberSpec, ProcessTable
from saga_fabricnet.release import FabricRelease
from saga_fabricnet.state import ORGS, NetworkState, Ports, StateFile

T = TypeVar("T")
READY_TIMEOUT = 120.0


def _parallel(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run independent admin commands at once: each waits on its own peer or on a
    block being cut, so doing them one after another only adds up the waits."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


class FabricNetwork:
    def __init__(
        self,
        directory: str | Path,
        release: FabricRelease | None = None,
        options: NetworkOptions | None = None,
    ) -> None:
        """`release` and `options` are used by `init`; for a folder that already holds a
        network they come from its state file (see `attach`)."""
        self.dir = Path(directory).resolve()
        self.layout = Layout(self.dir)
        self.state_file = StateFile(self.dir)
        self._release = release
        self._options = options or NetworkOptions()
        self.processes = ProcessTable(self.state_file)
        self.orgs = [Org(i) for i in ORGS]
        self._clients: list[GatewayClient] = []
        self.ready_seconds: float | None = None

    @classmethod
    def attach(cls, directory: str | Path) -> FabricNetwork:
        """A network another process initialised (and may be running)."""
        net = cls(directory)
        net.state_file.load()
        return net

    # -- what it is made of ------------------------------------------------

    @property
    def state(self) -> NetworkState:
        return self.state_file.load()

    @property
    def release(self) -> FabricRelease:
        if self.state_file.exists():
            s = self.state
            return FabricRelease(Path(s.fabric_bin), Path(s.fabric_cfg))
        if self._release is None:
            self._release = FabricRelease.locate()
        return self._release

    @property
    def options(self) -> NetworkOptions:
        return self.state.options if self.state_file.exists() else self._options

    @property
    def channel(self) -> str:
        return self.options.channel

    @property
    def orderers(self) -> list[str]:
        return [nodes.orderer_name(n) for n in range(len(self.state.ports.orderers))]

    @property
    def peers(self) -> list[str]:
        return [name for _, _, name in self._peer_refs()]

    def _peer_refs(self) -> list[tuple[Org, int, str]]:
        """(org, n, member name) of every peer: peer0 of each org, then the others."""
        counts = {o.index: self._peer_count(o) for o in self.orgs}
        refs = [(o, 0, nodes.peer_name(o)) for o in self.orgs]
        refs += [
            (o, n, nodes.peer_name(o, n)) for o in self.orgs for n in range(1, counts[o.index])
        ]
        return refs

    def _peer_count(self, org: Org) -> int:
        if self.state_file.exists():
            return nodes.peer_count(self.state, org)
        return self._options.org1_peers if org.index == 1 else 1

    def org_peers(self, org: int | str = 1) -> list[str]:
        """Member names of the org's peers, peer0 first (the order of its profile)."""
        o = self.org(org)
        return [name for p, _, name in self._peer_refs() if p == o]

    @property
    def members(self) -> list[str]:
        """Every process, in the order they start."""
        return [*self.orderers, *self.peers, nodes.CHAINCODE]

    def org(self, org: int | str) -> Org:
        if isinstance(org, str):
            for o in self.orgs:
                if org in (o.msp_id, o.name, o.domain, nodes.peer_name(o)):
                    return o
            raise ValueError(f"no org {org!r}")
        return Org(org)

    def profile(self, org: int | str = 1) -> Path:
        return self.layout.profile(self.org(org))

    def msp_dir(self, org: int | str = 1, user: str = "User1") -> Path:
        return self.layout.user_dir(self.org(org), user) / "msp"

    def client_tls(self, org: int | str = 1, user: str = "User1") -> tuple[Path, Path]:
        """The user's TLS client certificate and key (for client_auth_required peers)."""
        tls = self.layout.user_dir(self.org(org), user) / "tls"
        return tls / "client.crt", tls / "client.key"

    def gateway(self, org: int | str = 1) -> GatewayClient:
        """A GatewayClient as User1 of `org`, over every peer of the org (peer0 first);
        closed by `down`/`close_clients`."""
        tls = self.client_tls(org) if self.options.client_auth_required else None
        client = probes.org_gateway_client(self.profile(org), self.msp_dir(org), tls)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def log(self, member: str) -> Path:
        return self.layout.logs / f"{member}.log"

    # -- building it -------------------------------------------------------

    def init(self) -> None:
        """Crypto material, channel block, configs, builder and chaincode package,
        and the state file with the ports. Does nothing if already done."""
        if self.state_file.exists():
            return
        release = self.release
        options = self._options
        if options.consensus == "BFT" and release.major < 3:
            raise ValueError(f"BFT orderers need Fabric 3; FABRIC_BIN has {release.version}")
        # A half-made folder from an init that failed is rebuilt from scratch.
        for leftover in (self.layout.organizations, self.layout.config, self.layout.data):
            shutil.rmtree(leftover, ignore_errors=True)
        extra = {1: options.org1_peers - 1}
        ports = Ports.choose(options.orderers, extra)
        material.generate(
            release, self.layout, options.orderers, self.orgs, {1: options.org1_peers}
        )
        material.write_profiles(
            self.layout,
            self.orgs,
            {i: ports.peers[i].listen for i in ORGS},
            {i: [p.listen for p in more] for i, more in ports.more_peers.items()},
        )
        peer_config.write_config(release, self.layout)
        configtx.create_channel_block(release, self.layout, options, ports)
        chaincode_package.build(self.layout.chaincode_package, f"127.0.0.1:{ports.chaincode}")
        package_id = chaincode_package.package_id(
            release, self.layout.chaincode_package, self.layout.config
        )
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        # Written last: its presence means init finished.
        self.state_file.save(
            NetworkState(
                fabric_bin=str(release.bin_dir),
                fabric_cfg=str(release.cfg_dir),
                version=release.version,
                options=options,
                ports=ports,
                package_id=package_id,
            )
        )

    def spec(self, member: str) -> MemberSpec:
        state = self.state
        if member == nodes.CHAINCODE:
            return nodes.chaincode_spec(self.layout, state)
        for n, name in enumerate(self.orderers):
            if member == name:
                return nodes.orderer_spec(self.release, self.layout, state, n)
        for org, n, name in self._peer_refs():
            if member == name:
                return nodes.peer_spec(self.release, self.layout, state, org, n)
        raise ValueError(f"no member {member!r}; members are {', '.join(self.members)}")

    def up(self, timeout: float = READY_TIMEOUT) -> float:
        """From whatever there is (nothing, or a stopped network) to every member running
        and both orgs endorsing. Returns the seconds it took; stops everything it
        started if any step fails."""
        start = time.monotonic()
        try:
            self.init()
            admin = Admin(self.release, self.layout, self.state)
            _parallel([partial(self._ensure_started, m) for m in self.orderers + self.peers])
            if not self.state.channel_joined:
                _parallel([partial(admin.join_orderer, n) for n in range(len(self.orderers))])
                _parallel([partial(admin.join_peer, o, n) for o, n, _ in self._peer_refs()])
                self._mark(channel_joined=True)
            if not self.state.deployed:
                _parallel([partial(admin.install, o, n) for o, n, _ in self._peer_refs()])
                self._ensure_started(nodes.CHAINCODE)
                _parallel([partial(admin.approve, o) for o in self.orgs])
                admin.commit(self.orgs)
                self._mark(deployed=True)
            else:
                self._ensure_started(nodes.CHAINCODE)
            self.wait_endorsable(timeout=max(1.0, timeout - (time.monotonic() - start)))
        except BaseException:
            self.down()
            raise
        self.ready_seconds = time.monotonic() - start
        return self.ready_seconds

    def _mark(self, *, channel_joined: bool | None = None, deployed: bool | None = None) -> None:
        with self.state_file.update() as state:
            if channel_joined is not None:
                state.channel_joined = channel_joined
            if deployed is not None:
                state.deployed = deployed

    def _ensure_started(self, member: str) -> None:
        if not self.processes.running(member):
            self.processes.start(self.spec(member))

    # -- readiness and leadership -----------------------------------------

    def wait_endorsable(
        self, orgs: Sequence[int | str] | None = None, timeout: float = READY_TIMEOUT
    ) -> float:
        """Wait until each org's gateway endorses a GetRecord needing both orgs;
        returns the seconds waited."""
        start = time.monotonic()
        msp_ids = [o.msp_id for o in self.orgs]
        wanted = [self.org(o) for o in orgs] if orgs else self.orgs
        # Every peer's own gateway, so that a restarted peer of an org with several
        # counts only once it serves clients itself.
        for org, n, _ in self._peer_refs():
            if org not in wanted:
                continue
            tls = self.client_tls(org.index) if self.options.client_auth_required else None
            profile, msp = self.profile(org.index), self.msp_dir(org.index)
            with probes.gateway_client(profile, msp, tls, peer=org.peer_host(n)) as client:
                left = max(1.0, timeout - (time.monotonic() - start))
                probes.wait_endorsable(client, self.channel, msp_ids, left)
        return time.monotonic() - start

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Both orgs endorse and the ordering service has a leader: what a test waits
        for after restarting any member. Returns the seconds waited."""
        start = time.monotonic()
        self.raft_leader(timeout=timeout)
        self.wait_endorsable(timeout=max(1.0, timeout - (time.monotonic() - start)))
        return time.monotonic() - start

    def raft_leader(self, timeout: float = 30.0) -> str:
        """The orderer whose metrics (``consensus_etcdraft_is_leader``, or the BFT
        equivalent) say it leads the channel; waits for an election to finish."""
        deadline = time.monotonic() + timeout
        state = self.state
        while True:
            for n, ports in enumerate(state.ports.orderers):
                if probes.is_leader(ports.operations, self.channel):
                    return nodes.orderer_name(n)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no orderer reports itself leader of {self.channel}")
            time.sleep(0.2)

    leader = raft_leader

    # -- process control ---------------------------------------------------

    def start(self, member: str) -> None:
        """Start a stopped member again, on its ports and data; returns once it listens."""
        self.processes.start(self.spec(member))

    def stop(self, member: str) -> bool:
        """SIGTERM and wait for it to exit (SIGKILL after 15 s)."""
        self.spec(member)  # rejects unknown names
        return self.processes.stop(member)

    def kill(self, member: str) -> bool:
        self.spec(member)
        return self.processes.kill(member)

    def restart(self, member: str, *, kill: bool = False) -> None:
        if kill:
            self.kill(member)
        else:
            self.stop(member)
        self.start(member)

    def running(self, member: str) -> bool:
        return self.processes.running(member)

    @contextmanager
    def stopped(self, member: str, *, kill: bool = False) -> Iterator[None]:
        """The member is down inside the block and started again after it."""
        if kill:
            self.kill(member)
        else:
            self.stop(member)
        try:
            yield
        finally:
            self.start(member)

    def down(self) -> None:
        """Stop every member this network's state file knows of, clients first, the
        chaincode and peers before the orderers. Data stays; `up` starts it again."""
        self.close_clients()
        if not self.state_file.exists():
            return
        for member in reversed(self.members):
            try:
                self.processes.stop(member)
            except Exception:  # keep stopping the rest
                self.processes.kill(member)
