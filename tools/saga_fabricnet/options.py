"""What kind of network to build: the knobs a test or a developer turns."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CONSENSUS_TYPES = ("etcdraft", "BFT")


@dataclass(frozen=True)
class NetworkOptions:
    channel: str = "mychannel"
    orderers: int = 3
    consensus: str = "etcdraft"
    # Fabric's sample value; tests want ~0.5 s so that a commit does not wait long.
    batch_timeout: float = 2.0
    max_message_count: int = 10
    # Peers demand a client TLS certificate (User1's tls/client.crt) from every caller.
    client_auth_required: bool = False
    # Peers of Org1 (peer0.org1, peer1.org1, ...). One is the default: a second peer
    # only matters to tests of a gateway client moving between its org's peers, and
    # costs every other network a process and a channel join.
    org1_peers: int = 1

    def __post_init__(self) -> None:
        if self.consensus not in CONSENSUS_TYPES:
            raise ValueError(f"consensus must be one of {CONSENSUS_TYPES}, not {self.consensus!r}")
        if self.consensus == "etcdraft" and self.orderers < 1:
            raise ValueError("etcdraft needs at least one orderer")
        if self.consensus == "BFT" and self.orderers < 4:
            raise ValueError("BFT needs at least four orderers (3f+1 with f=1)")
        if self.org1_peers < 1:
            raise ValueError("org1_peers must be at least 1")
        if self.batch_timeout <= 0:
            raise ValueError("batch_timeout must be positive")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkOptions:
        # State files written before a field existed take its default.
        return cls(**data)
