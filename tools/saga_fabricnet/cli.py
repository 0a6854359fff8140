"""python -m saga_fabricnet: start a real Fabric test network, or act on a running one.

python -m saga_fabricnet up --dir /tmp/net --fabric-bin .fabric/fabric-2.5.16/bin
python -m saga_fabricnet kill peer0.org2 --dir /tmp/net
python -m saga_fabricnet start peer0.org2 --dir /tmp/net
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from saga_fabricnet.network import FabricNetwork
from saga_fabricnet.options import CONSENSUS_TYPES, NetworkOptions
from saga_fabricnet.release import FabricBinaryMissing, FabricRelease
from saga_fabricnet.state import StateFile


def _network_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fabric-bin", help="folder with peer, orderer, ... (default: $FABRIC_BIN)")
    p.add_argument(
        "--fabric-cfg",
        help="folder with core.yaml and orderer.yaml (default: $FABRIC_CFG_PATH, else "
        "FABRIC_BIN/../config)",
    )
    p.add_argument("--channel", default="mychannel")
    p.add_argument(
        "--batch-timeout", type=float, default=2.0, help="seconds before a block is cut (2)"
    )
    p.add_argument("--orderers", type=int, default=None, help="3 for etcdraft, 4 for BFT")
    p.add_argument("--consensus", choices=CONSENSUS_TYPES, default="etcdraft")
    p.add_argument(
        "--client-auth",
        action="store_true",
        help="peers require a client TLS certificate (users' tls/client.crt)",
    )
    p.add_argument(
        "--org1-peers",
        type=int,
        default=1,
        help="peers of Org1 (1); 2 adds peer1.org1, listed in connection-org1.json",
    )


def _dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True, type=Path, help="the network's folder")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m saga_fabricnet",
        description="A real Hyperledger Fabric test network as plain processes on 127.0.0.1.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up",
        help="init if needed, start everything, wait until ready, "
        "stay in the foreground (Ctrl-C or SIGTERM stops all)",
    )
    _dir_arg(up)
    _network_args(up)
    init = sub.add_parser("init", help="crypto material, channel block, configs, ports only")
    _dir_arg(init)
    _network_args(init)
    down = sub.add_parser("down", help="stop every member recorded in the state file")
    _dir_arg(down)
    status = sub.add_parser("status", help="members, pids, ports and the Raft leader")
    _dir_arg(status)
    for name, what in (
        ("stop", "SIGTERM a member and wait for it to exit"),
        ("kill", "SIGKILL a member"),
        ("start", "start a stopped member again on its ports and data"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument(
            "member", help="orderer0..N, peer0.org1 (peer1.org1 ...), peer0.org2 or chaincode"
        )
        _dir_arg(p)
    leader = sub.add_parser("leader", help="print the orderer that leads the channel")
    _dir_arg(leader)
    return parser


def _new_network(opts: argparse.Namespace) -> FabricNetwork:
    orderers = opts.orderers or (4 if opts.consensus == "BFT" else 3)
    options = NetworkOptions(
        channel=opts.channel,
        orderers=orderers,
        consensus=opts.consensus,
        batch_timeout=opts.batch_timeout,
        client_auth_required=opts.client_auth,
        org1_peers=opts.org1_peers,
    )
    # An initialised folder keeps the release and options it was made with.
    exists = StateFile(opts.dir).exists()
    release = None if exists else FabricRelease.locate(opts.fabric_bin, opts.fabric_cfg)
    return FabricNetwork(opts.dir, release, options)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _up(net: FabricNetwork) -> int:
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        seconds = net.up()
        state = net.state
        print(f"Fabric {state.version} ready in {seconds:.1f} s: channel {net.channel}, ", end="")
        print(f"members {', '.join(net.members)}")
        for org in net.orgs:
            print(f"  {org.msp_id}: profile {net.profile(org.index)}")
            print(f"           identity {net.msp_dir(org.index)}")
        print(f"  logs in {net.layout.logs}; Ctrl-C stops the network", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        net.down()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    try:
        if opts.command in ("up", "init"):
            net = _new_network(opts)
            if opts.command == "init":
                net.init()
                print(f"initialised {net.dir} (Fabric {net.state.version})")
                return 0
            return _up(net)
        net = FabricNetwork.attach(opts.dir)
        if opts.command == "down":
            net.down()
        elif opts.command == "status":
            state = net.state
            print(f"Fabric {state.version}, channel {net.channel}, folder {net.dir}")
            for member in net.members:
                pid = state.pids.get(member)
                alive = "running" if net.running(member) else "stopped"
                print(f"  {member:12} {alive:8} pid {pid or '-'}")
        elif opts.command == "leader":
            print(net.raft_leader())
        elif opts.command == "stop":
            print("stopped" if net.stop(opts.member) else "was not running")
        elif opts.command == "kill":
            print("killed" if net.kill(opts.member) else "was not running")
        elif opts.command == "start":
            net.start(opts.member)
            print(f"{opts.member} started (pid {net.state.pids[opts.member]})")
    except (FabricBinaryMissing, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
