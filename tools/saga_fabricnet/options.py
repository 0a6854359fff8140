"""What kind of network to build: the knobs a test or a developer turns."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

CONSENSUS_TYPES = ("etcdraft", "BFT")

# configtxgen's size syntax as the template takes it: an integer, a space, KB or MB.
_SIZE = re.compile(r"^([1-9][0-9]*) (KB|MB)$")
_UNITS = {"KB": 1024, "MB": 1024 * 1024}
# The largest block the orderer accepts; rendered into the template's
# AbsoluteMaxBytes. Under gRPC's default 100 MB message limit of peers and orderers.
ABSOLUTE_MAX_BYTES = "99 MB"


def size_bytes(size: str) -> int:
    """Bytes in a configtx size such as "512 KB" or "32 MB"."""
    match = _SIZE.match(size)
    if match is None:
        raise ValueError(f"a size is '<int> KB' or '<int> MB', not {size!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class NetworkOptions:
    channel: str = "mychannel"
    orderers: int = 3
    consensus: str = "etcdraft"
    # Fabric's sample value; tests want ~0.5 s so that a commit does not wait long.
    batch_timeout: float = 2.0
    max_message_count: int = 10
    # Fabric's sample value. The orderer cuts a block once its transactions reach this
    # size, whatever MaxMessageCount says: at 3-4 KB a chain transaction, 512 KB is
    # about 150 of them. A bench that wants only time to cut blocks raises it.
    preferred_max_bytes: str = "512 KB"
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
        # configtxgen refuses a preferred size above the absolute one; say so here.
        if size_bytes(self.preferred_max_bytes) > size_bytes(ABSOLUTE_MAX_BYTES):
            raise ValueError(
                f"preferred_max_bytes {self.preferred_max_bytes} is above the"
                f" orderer's AbsoluteMaxBytes {ABSOLUTE_MAX_BYTES}"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkOptions:
        # State files written before a field existed take its default.
        return cls(**data)
