"""The chaos run's ledger: the devnet (saga_devnet, started by the process set) or a
real Fabric network (saga_fabricnet: three etcdraft orderers, peer0.org1, peer0.org2,
sagafacts as a service; endorsement needs both orgs), and the ledger outages each
one can suffer.

On the real network the outages are those the issue names: the chaincode server
SIGKILLed, one org's peer SIGKILLed (peer0.org2, the other org's endorser, or
peer0.org1, the gateway every product process talks to), the Raft leader among the
three orderers stopped (SIGTERM), each for 15-25 s, then started again on its ports
and data. A chain step meanwhile must wait (DESIGN.md guarantee 7), never compensate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from saga_fabricnet import FabricNetwork, FabricRelease, NetworkOptions
from tests.support.processes import ROOT

LEDGERS = ("devnet", "fabric")
FABRIC_VERSIONS = ("2.5.16", "3.1.5")
# Blocks cut after 0.5 s at most (Fabric's sample waits 2 s): a chain step's commit
# then costs about what it costs on the devnet, so the two runs compare.
CHAOS_BATCH_TIMEOUT = 0.5

# Fault kind -> the network member it takes down ("leader": whichever orderer leads).
FABRIC_MEMBER = {
    "chaincode_restart": "chaincode",
    "chaincode_outage": "chaincode",
    "peer_outage": "peer0.org2",
    "gateway_peer_outage": "peer0.org1",
    "orderer_leader_outage": "leader",
    "orderer_leader_kill": "leader",
}
# The orderer leader is stopped (SIGTERM: a planned restart, as the issue says); the
# chaincode and the peers are SIGKILLed (a crash).
GRACEFUL = {"orderer_leader_outage"}


def fabric_release(value: str | Path | FabricRelease) -> FabricRelease:
    """A version this repository installs under .fabric/, or a release folder (bin/ and
    config/). FabricBinaryMissing if a binary is absent: the run fails, never skips.
    The folder is passed as bin/config explicitly so that a FABRIC_BIN in the
    environment (set for the 2.5 tests) cannot swap the release under a 3.1 run."""
    if isinstance(value, FabricRelease):
        return value
    folder = Path(value)
    if str(value) in FABRIC_VERSIONS:
        folder = ROOT / ".fabric" / f"fabric-{value}"
    folder = folder.resolve()
    return FabricRelease.locate(folder / "bin", folder / "config")


@dataclass
class FabricLedger:
    """The real network of one chaos run, and the outages the injector causes on it."""

    network: FabricNetwork

    @classmethod
    def create(
        cls, directory: Path, release: FabricRelease, batch_timeout: float, org1_peers: int = 1
    ) -> FabricLedger:
        options = NetworkOptions(batch_timeout=batch_timeout, org1_peers=org1_peers)
        return cls(FabricNetwork(directory, release, options))

    @property
    def version(self) -> str:
        return self.network.release.version

    def env(self) -> dict[str, str]:
        """What points every product process at the network, as
        saga.entrypoints.processes.devnet_env does for the devnet: org1's connection
        profile and User1's MSP."""
        net = self.network
        return {
            "SAGA_FABRIC_PROFILE": str(net.profile(1)),
            "SAGA_FABRIC_MSP_DIR": str(net.msp_dir(1)),
            "SAGA_FABRIC_MSP_ID": net.org(1).msp_id,
            "SAGA_FABRIC_CHANNEL": net.options.channel,
        }

    def up(self) -> float:
        return self.network.up()

    def down(self) -> None:
        self.network.down()

    def take_down(self, kind: str) -> str:
        """Stop or kill the member `kind` is about; returns its name."""
        member = FABRIC_MEMBER[kind]
        if member == "leader":
            member = self.network.raft_leader(timeout=60.0)
        if kind in GRACEFUL:
            self.network.stop(member)
        else:
            self.network.kill(member)
        return member

    def bring_back(self, member: str) -> None:
        self.network.start(member)

    def ready_after(self, timeout: float = 120.0) -> float:
        """Seconds until an orderer leads again and both orgs endorse (for the record:
        the product does not wait for this, it waits for the ledger itself)."""
        started = time.monotonic()
        self.network.wait_ready(timeout=timeout)
        return time.monotonic() - started

    def members_down(self) -> list[str]:
        return [m for m in self.network.members if not self.network.running(m)]
