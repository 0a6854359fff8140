"""The launcher's network as a compose deployment (compose/fabric-network.yml).

Same crypto material, configtx.yaml template, core.yaml edit, external builder,
chaincode package and admin commands as ``python -m saga_fabricnet up``; what differs is
where the members are: each runs in its own container and is reached by its compose
service name (``orderer0.example.com``, ``peer0.org1.example.com``, ``chaincode``)
instead of 127.0.0.1. The launcher renders 127.0.0.1 addresses; this module gives each
member a port of its own and turns every ``127.0.0.1:<port>`` (and the profiles'
``localhost:<port>``) into ``<service>:<port>``.

    python -m saga_fabricnet.compose init       # job fabric-init: material, block, package
    python -m saga_fabricnet.compose deploy     # job fabric-setup: join, lifecycle, ready
    python -m saga_fabricnet.compose chaincode  # service chaincode: python -m sagafacts_chaincode
    python -m saga_fabricnet.compose env peer0.org1.example.com   # a node's environment
    python -m saga_fabricnet.compose check      # image build: binaries and package files

``init --org1-peers 2`` adds peer1.org1.example.com (compose/fabric-network-ha.yml):
its own material, ports and ledger, gossip bootstrap between the two Org1 peers, both
in connection-org1.json; ``deploy`` joins and installs on every peer the state names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from saga_fabricnet import builder, chaincode_package, configtx, material, nodes, peer_config
from saga_fabricnet.admin import Admin, AdminCommandFailed
from saga_fabricnet.material import Layout, Org
from saga_fabricnet.network import FabricNetwork
from saga_fabricnet.options import NetworkOptions
from saga_fabricnet.release import FabricBinaryMissing, FabricRelease
from saga_fabricnet.state import ORGS, NetworkState, OrdererPorts, PeerPorts, Ports, StateFile

# The official images' tag; compose/fabric-network.yml and compose/Dockerfile use it.
FABRIC_VERSION = "2.5.16"
# The shared volume, mounted at the same path in every container: configtx.yaml,
# core.yaml and the state file hold absolute paths, which must mean the same file
# to the setup jobs, the nodes, the chaincode and the product's services.
ROOT = Path("/var/lib/saga/fabricnet")
# Each node's own ledger volume, where the official images keep it.
NODE_DATA = "/var/hyperledger/production"
CHAINCODE_HOST = "chaincode"
ORDERERS = 3
READY_TIMEOUT = 180.0

_LOOPBACK = ("127.0.0.1", "localhost")
_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost):(\d+)\b")
# Variables the launcher passes through from its own environment; a container has its own.
_HOST_ONLY = ("PATH", "HOME", "LANG", "TZ")


def ports(org1_peers: int = 1) -> Ports:
    """Fixed, and distinct across members although each has its own container: a
    port then names its member, which is what `readdress` relies on (and the nodes
    could be published on one host without clashes)."""
    return Ports(
        orderers=[
            OrdererPorts(listen=7050 + 1000 * n, admin=7053 + 1000 * n, operations=9443 + n)
            for n in range(ORDERERS)
        ],
        peers={1: PeerPorts(7051, 7052, 9446), 2: PeerPorts(9051, 9052, 9447)},
        chaincode=9999,
        # peer1.org1 of the HA network; MAX_ORG1_PEERS is 2, so one set is enough.
        more_peers={1: [PeerPorts(10051, 10052, 9448)]} if org1_peers > 1 else {},
    )


# Most Org1 peers a compose deployment may have (compose/fabric-network-ha.yml).
MAX_ORG1_PEERS = 2


def peer_refs(org1_peers: int = 1) -> list[tuple[Org, int]]:
    """(org, n) of every peer: peer0 of each org, then Org1's others."""
    return [(Org(i), 0) for i in ORGS] + [(Org(1), n) for n in range(1, org1_peers)]


def orderer_host(n: int) -> str:
    return Layout(ROOT).orderer_host(n)


def peer_host(org: Org) -> str:
    return org.peer


def hosts() -> dict[int, str]:
    """Port -> the compose service listening on it."""
    # Every port any topology has: one table readdresses the default and the HA network.
    p = ports(MAX_ORG1_PEERS)
    table = {p.chaincode: CHAINCODE_HOST}
    for n, o in enumerate(p.orderers):
        table.update(dict.fromkeys((o.listen, o.admin, o.operations), orderer_host(n)))
    for org, n in peer_refs(MAX_ORG1_PEERS):
        peer = p.peer(org.index, n)
        table.update(
            dict.fromkeys((peer.listen, peer.chaincode, peer.operations), org.peer_host(n))
        )
    return table


def services(org1_peers: int = 1) -> list[str]:
    """The network's compose services, in start order."""
    peers = [org.peer_host(n) for org, n in peer_refs(org1_peers)]
    return [*(orderer_host(n) for n in range(ORDERERS)), *peers]


def readdress(value: str) -> str:
    """``127.0.0.1:<port>`` / ``localhost:<port>`` -> ``<service>:<port>`` for a
    member's port; other text (a port no member has) is left alone."""
    table = hosts()

    def swap(m: re.Match[str]) -> str:
        host = table.get(int(m.group(1)))
        return f"{host}:{m.group(1)}" if host else m.group(0)

    return _ADDRESS.sub(swap, value)


def readdress_tree(node: Any) -> Any:
    """`readdress` through a parsed YAML/JSON document, including configtx's
    ``{Host: 127.0.0.1, Port: n}`` pairs (anchor peers, Raft consenters)."""
    if isinstance(node, dict):
        out = {k: readdress_tree(v) for k, v in node.items()}
        port = out.get("Port")
        if out.get("Host") in _LOOPBACK and isinstance(port, int) and port in hosts():
            out["Host"] = hosts()[port]
        return out
    if isinstance(node, list):
        return [readdress_tree(v) for v in node]
    if isinstance(node, str):
        return readdress(node)
    return node


def options(
    channel: str = "mychannel", batch_timeout: float = 2.0, org1_peers: int = 1
) -> NetworkOptions:
    if not 1 <= org1_peers <= MAX_ORG1_PEERS:
        raise ValueError(f"org1_peers must be 1..{MAX_ORG1_PEERS}: the compose files have those")
    # Raft on three orderers only: the compose file has three, and BFT needs Fabric 3.
    return NetworkOptions(
        channel=channel, orderers=ORDERERS, batch_timeout=batch_timeout, org1_peers=org1_peers
    )


def render_configtx(layout: Layout, opts: NetworkOptions) -> str:
    """The launcher's configtx.yaml (its template, its profile) with service names."""
    document = yaml.safe_load(configtx.render(layout, opts, ports()))
    return yaml.safe_dump(readdress_tree(document), sort_keys=False)


def connection_profile(layout: Layout, org: Org, org1_peers: int = 1) -> dict[str, Any]:
    """The launcher's connection profile for `org`, naming the peers' services. It has a
    Fabric CA entry on a port no member has, left as is: no CA runs (cryptogen)."""
    p = ports(org1_peers)
    more = [peer.listen for peer in p.more_peers.get(org.index, [])]
    profile: dict[str, Any] = readdress_tree(
        material.connection_profile(layout, org, p.peers[org.index].listen, more)
    )
    return profile


class _ImageRelease(FabricRelease):
    """The binaries inside the official images, which are not on this machine: only
    their paths and version are needed to derive a node's environment."""

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    @cached_property
    def version(self) -> str:
        return FABRIC_VERSION


def _state(opts: NetworkOptions, package_id: str = "") -> NetworkState:
    image = _ImageRelease(Path("/usr/local/bin"), Path("/etc/hyperledger/fabric"))
    return NetworkState(
        fabric_bin=str(image.bin_dir),
        fabric_cfg=str(image.cfg_dir),
        version=image.version,
        options=opts,
        ports=ports(opts.org1_peers),
        package_id=package_id,
    )


def _containerise(env: dict[str, str], data: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in env.items():
        if key in _HOST_ONLY:
            continue
        if key.endswith("LISTENADDRESS"):
            # Listen on the container's interfaces; others dial the service name.
            value = re.sub(r"^(?:127\.0\.0\.1|localhost)", "0.0.0.0", value)
        else:
            value = readdress(value)
        out[key] = value.replace(str(data), NODE_DATA)
    return out


def node_environment(service: str, opts: NetworkOptions | None = None) -> dict[str, str]:
    """The environment of an orderer's or peer's container: the launcher's own
    (nodes.orderer_spec / nodes.peer_env), listening on 0.0.0.0, dialling service
    names, its ledger in its own volume."""
    opts = opts or options()
    layout = Layout(ROOT)
    state = _state(opts)
    image = _ImageRelease(Path(state.fabric_bin), Path(state.fabric_cfg))
    for n in range(ORDERERS):
        if service == orderer_host(n):
            env = nodes.orderer_spec(image, layout, state, n).env
            return _containerise(env, layout.data / nodes.orderer_name(n))
    for org, n in peer_refs(opts.org1_peers):
        if service == org.peer_host(n):
            return _containerise(
                nodes.peer_env(layout, state, org, n), layout.data / nodes.peer_name(org, n)
            )
    names = ", ".join(services(opts.org1_peers))
    raise ValueError(f"no Fabric node {service!r}; nodes are {names}")


# -- job fabric-init -----------------------------------------------------------


def init(directory: Path, release: FabricRelease, opts: NetworkOptions) -> NetworkState:
    """What FabricNetwork.init makes, addressed for compose. Does nothing if done:
    the job runs again on every `up`, and the volume keeps the network."""
    state_file = StateFile(directory)
    if state_file.exists():
        return state_file.load()
    layout = Layout(directory)
    for leftover in (layout.organizations, layout.config, layout.channel_block.parent):
        shutil.rmtree(leftover, ignore_errors=True)
    orgs = [Org(i) for i in ORGS]
    material.generate(release, layout, opts.orderers, orgs, {1: opts.org1_peers})
    for org in orgs:
        text = json.dumps(connection_profile(layout, org, opts.org1_peers), indent=4) + "\n"
        layout.profile(org).write_text(text)
    peer_config.write_config(release, layout)
    (layout.config / "configtx.yaml").write_text(render_configtx(layout, opts))
    layout.channel_block.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            str(release.binary("configtxgen")),
            *("-profile", configtx.PROFILE, "-channelID", opts.channel),
            *("-outputBlock", str(layout.channel_block)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "FABRIC_CFG_PATH": str(layout.config)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"configtxgen failed: {result.stderr or result.stdout}")
    p = ports(opts.org1_peers)
    chaincode_package.build(layout.chaincode_package, f"{CHAINCODE_HOST}:{p.chaincode}")
    package_id = chaincode_package.package_id(release, layout.chaincode_package, layout.config)
    state = NetworkState(
        fabric_bin=str(release.bin_dir),
        fabric_cfg=str(release.cfg_dir),
        version=release.version,
        options=opts,
        ports=p,
        package_id=package_id,
    )
    # Written last: its presence means init finished.
    state_file.save(state)
    return state


# -- job fabric-setup ----------------------------------------------------------


class ComposeAdmin(Admin):
    """The launcher's admin commands, dialling service names; and safe to run again
    after a job that failed half-way (compose restarts it on the next `up`)."""

    def peer_env(self, org: Org, n: int = 0) -> dict[str, str]:
        env = super().peer_env(org, n)
        env["CORE_PEER_ADDRESS"] = readdress(env["CORE_PEER_ADDRESS"])
        return env

    def _peer(self, org: Org, args: Sequence[str], what: str, n: int = 0) -> str:
        # Covers the orderer (-o) and --peerAddresses of approveformyorg and commit.
        return super()._peer(org, [readdress(a) for a in args], what, n)

    def orderer_admin_address(self, n: int) -> str:
        return f"{orderer_host(n)}:{self.state.ports.orderers[n].admin}"

    def join_peer(self, org: Org, n: int = 0) -> None:
        what = f"peer channel list on {org.peer_host(n)}"
        joined = self._peer(org, ["channel", "list"], what, n)
        if self.state.options.channel not in joined.split():
            super().join_peer(org, n)

    def committed(self) -> bool:
        try:
            self._peer(
                Org(ORGS[0]),
                [
                    *("lifecycle", "chaincode", "querycommitted"),
                    *("--channelID", self.state.options.channel),
                    *("--name", chaincode_package.NAME),
                ],
                "querycommitted",
            )
        except AdminCommandFailed:
            return False
        return True


def wait_reachable(addresses: Sequence[tuple[str, int]], timeout: float) -> None:
    """Until each (service, port) accepts a connection: `depends_on` only says the
    containers started, not that the nodes listen."""
    deadline = time.monotonic() + timeout
    for host, port in addresses:
        while True:
            try:
                with socket.create_connection((host, port), timeout=2.0):
                    break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{host}:{port} not reachable: {exc}") from None
                time.sleep(1.0)


def deploy(directory: Path, timeout: float = READY_TIMEOUT) -> float:
    """Orderers and peers join the channel, sagafacts goes through the lifecycle, and
    both orgs endorse; returns the seconds it took. Steps already done are skipped."""
    start = time.monotonic()
    net = FabricNetwork.attach(directory)
    state_file = StateFile(directory)
    state = state_file.load()
    admin = ComposeAdmin(net.release, net.layout, state)
    p = state.ports
    peers = peer_refs(state.options.org1_peers)
    wait_reachable(
        [(orderer_host(n), o.admin) for n, o in enumerate(p.orderers)]
        + [(org.peer_host(n), p.peer(org.index, n).listen) for org, n in peers],
        timeout,
    )
    orgs = [Org(i) for i in ORGS]
    if not state.channel_joined:
        for n in range(len(p.orderers)):
            admin.join_orderer(n)
        for org, n in peers:
            admin.join_peer(org, n)
        with state_file.update() as s:
            s.channel_joined = True
    if not state.deployed:
        # Install (skipped where done) even if a half-finished run committed: a peer
        # without the package cannot endorse.
        for org, n in peers:
            admin.install(org, n)
        if not admin.committed():
            for org in orgs:
                admin.approve(org)
            admin.commit(orgs)
        with state_file.update() as s:
            s.deployed = True
    net.wait_endorsable(timeout=max(1.0, timeout - (time.monotonic() - start)))
    return time.monotonic() - start


def check_install(release: FabricRelease) -> str:
    """What the jobs need from their image: a whole release, and the package files
    that are not Python (the configtx template, the builder's scripts)."""
    resources.files("saga_fabricnet.templates").joinpath("configtx.yaml.tmpl").read_text()
    for step in builder.STEPS:
        resources.files("saga_fabricnet.builder").joinpath("bin", step).read_bytes()
    return release.version


# -- command line ----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m saga_fabricnet.compose",
        description="The saga_fabricnet network as compose services (compose/fabric-network.yml).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init_p = sub.add_parser("init", help="crypto material, channel block, configs, package id")
    init_p.add_argument("--fabric-bin", help="default: $FABRIC_BIN")
    init_p.add_argument("--fabric-cfg", help="default: $FABRIC_CFG_PATH")
    init_p.add_argument("--channel", default=os.environ.get("SAGA_FABRIC_CHANNEL") or "mychannel")
    init_p.add_argument("--batch-timeout", type=float, default=2.0)
    init_p.add_argument(
        "--org1-peers",
        type=int,
        choices=range(1, MAX_ORG1_PEERS + 1),
        default=1,
        help="2 adds peer1.org1.example.com (compose/fabric-network-ha.yml)",
    )
    deploy_p = sub.add_parser(
        "deploy", help="join the channel, deploy sagafacts, wait until both orgs endorse"
    )
    deploy_p.add_argument("--timeout", type=float, default=READY_TIMEOUT)
    chaincode_p = sub.add_parser(
        "chaincode", help="run python -m sagafacts_chaincode under the package id init computed"
    )
    check_p = sub.add_parser("check", help="the Fabric binaries and package files are there")
    check_p.add_argument("--fabric-bin", help="default: $FABRIC_BIN")
    check_p.add_argument("--fabric-cfg", help="default: $FABRIC_CFG_PATH")
    env_p = sub.add_parser("env", help="print a node's container environment (YAML)")
    env_p.add_argument("service", choices=services(MAX_ORG1_PEERS))
    env_p.add_argument("--org1-peers", type=int, choices=range(1, MAX_ORG1_PEERS + 1), default=1)
    for p in (init_p, deploy_p, chaincode_p):
        p.add_argument("--dir", type=Path, default=ROOT, help=f"the shared volume ({ROOT})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    try:
        if opts.command == "init":
            release = FabricRelease.locate(opts.fabric_bin, opts.fabric_cfg)
            network = options(opts.channel, opts.batch_timeout, opts.org1_peers)
            state = init(opts.dir, release, network)
            print(f"Fabric {state.version} network in {opts.dir}: channel {state.options.channel}")
            print(f"sagafacts package id {state.package_id}", flush=True)
        elif opts.command == "deploy":
            seconds = deploy(opts.dir, opts.timeout)
            print(f"channel joined, sagafacts committed, both orgs endorse ({seconds:.1f} s)")
        elif opts.command == "chaincode":
            package_id = StateFile(opts.dir).load().package_id
            # The peers accept the chaincode only under the id they installed.
            os.environ["CHAINCODE_ID"] = package_id
            os.execv(
                sys.executable, [sys.executable, "-m", "sagafacts_chaincode", "--id", package_id]
            )
        elif opts.command == "check":
            version = check_install(FabricRelease.locate(opts.fabric_bin, opts.fabric_cfg))
            print(f"Fabric {version} and saga_fabricnet's files are in place")
        elif opts.command == "env":
            env = node_environment(opts.service, options(org1_peers=opts.org1_peers))
            print(yaml.safe_dump(env, sort_keys=False), end="")
    except (FabricBinaryMissing, OSError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
