"""The state file (``DIR/fabricnet.json``): the one place a network's ports, pids and
progress live, so that restarts reuse the same ports and data and a second process
(the CLI, another test) can act on a network it did not start."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saga_devnet.chaincode_launcher import free_port
from saga_fabricnet.options import NetworkOptions

STATE_FILE = "fabricnet.json"
ORGS = (1, 2)


@dataclass
class OrdererPorts:
    listen: int
    admin: int
    operations: int


@dataclass
class PeerPorts:
    listen: int
    chaincode: int
    operations: int


@dataclass
class Ports:
    orderers: list[OrdererPorts]
    # peer0 of each org
    peers: dict[int, PeerPorts]
    chaincode: int
    # peer1, peer2, ... of an org that has more than one
    more_peers: dict[int, list[PeerPorts]] = field(default_factory=dict)

    @classmethod
    def choose(cls, orderers: int, extra_peers: dict[int, int] | None = None) -> Ports:
        extra = {org: n for org, n in (extra_peers or {}).items() if n > 0}
        count = 3 * orderers + 3 * len(ORGS) + 1 + 3 * sum(extra.values())
        # Each free_port() closes its socket before the next one is asked for, so the
        # kernel may hand out the same number twice; retry until all are distinct.
        while True:
            numbers = [free_port() for _ in range(count)]
            if len(set(numbers)) == len(numbers):
                break
        it = iter(numbers)
        return cls(
            orderers=[OrdererPorts(next(it), next(it), next(it)) for _ in range(orderers)],
            peers={org: PeerPorts(next(it), next(it), next(it)) for org in ORGS},
            chaincode=next(it),
            more_peers={
                org: [PeerPorts(next(it), next(it), next(it)) for _ in range(n)]
                for org, n in extra.items()
            },
        )

    def peer(self, org: int, n: int = 0) -> PeerPorts:
        """The ports of peer`n` of org `org`."""
        return self.peers[org] if n == 0 else self.more_peers[org][n - 1]

    def to_json(self) -> dict[str, Any]:
        return {
            "orderers": [vars(o) for o in self.orderers],
            "peers": {str(k): vars(v) for k, v in self.peers.items()},
            "chaincode": self.chaincode,
            "more_peers": {str(k): [vars(p) for p in v] for k, v in self.more_peers.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ports:
        return cls(
            orderers=[OrdererPorts(**o) for o in data["orderers"]],
            peers={int(k): PeerPorts(**v) for k, v in data["peers"].items()},
            chaincode=int(data["chaincode"]),
            more_peers={
                int(k): [PeerPorts(**p) for p in v]
                for k, v in (data.get("more_peers") or {}).items()
            },
        )


@dataclass
class NetworkState:
    fabric_bin: str
    fabric_cfg: str
    version: str
    options: NetworkOptions
    ports: Ports
    package_id: str = ""
    channel_joined: bool = False
    deployed: bool = False
    pids: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "fabric_bin": self.fabric_bin,
            "fabric_cfg": self.fabric_cfg,
            "version": self.version,
            "options": self.options.to_json(),
            "ports": self.ports.to_json(),
            "package_id": self.package_id,
            "channel_joined": self.channel_joined,
            "deployed": self.deployed,
            "pids": self.pids,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkState:
        return cls(
            fabric_bin=data["fabric_bin"],
            fabric_cfg=data["fabric_cfg"],
            version=data["version"],
            options=NetworkOptions.from_json(data["options"]),
            ports=Ports.from_json(data["ports"]),
            package_id=data.get("package_id", ""),
            channel_joined=bool(data.get("channel_joined")),
            deployed=bool(data.get("deployed")),
            pids={k: int(v) for k, v in (data.get("pids") or {}).items()},
        )


class StateFile:
    """Read-modify-write of the state file under an flock, since the foreground
    launcher and a CLI call may both record pids at the same moment."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self._lock = directory / f".{STATE_FILE}.lock"

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> NetworkState:
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path} does not exist: run `python -m saga_fabricnet init` (or up) first"
            )
        return NetworkState.from_json(json.loads(self.path.read_text()))

    def save(self, state: NetworkState) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
        os.replace(tmp, self.path)

    @contextmanager
    def update(self) -> Iterator[NetworkState]:
        with self._lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.load()
                yield state
                self.save(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
