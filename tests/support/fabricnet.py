"""A REAL Fabric network (official peer/orderer binaries, Raft orderers, two orgs,
sagafacts as chaincode-as-a-service) for tests, with LedgerNet's surface.

    from tests.support.fabricnet import RealLedgerNet  # fixture: a tests/conftest.py plugin

    def test_x(real_sagafacts_net: RealLedgerNet):
        client = real_sagafacts_net.gateway(1)          # GatewayClient as User1@org1
        client.submit_transaction(real_sagafacts_net.channel, "sagafacts", "RecordFact", [...])
        net = real_sagafacts_net.network                # saga_fabricnet.FabricNetwork
        net.kill("peer0.org2"); net.start("peer0.org2"); net.wait_ready()

The binaries come from FABRIC_BIN / FABRIC_CFG_PATH, else `.fabric/fabric-2.5.16` in the
repository (scripts/test.sh installs it). A missing binary FAILS the test, never skips.
Options per module: `@pytest.mark.parametrize("real_sagafacts_net",
[{"client_auth_required": True}], indirect=True)`; keys are NetworkOptions fields plus
"fabric" (a release folder).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from saga.adapters.fabric import GatewayClient
from saga_fabricnet import FabricBinaryMissing, FabricNetwork, FabricRelease, NetworkOptions

REPO = Path(__file__).resolve().parents[2]
FABRIC_25 = REPO / ".fabric" / "fabric-2.5.16"
FABRIC_31 = REPO / ".fabric" / "fabric-3.1.5"
# Short blocks: a commit in a test waits ~0.5 s instead of Fabric's sample 2 s.
TEST_BATCH_TIMEOUT = 0.5


def fabric_archives() -> Path:
    """The folder of Fabric's install.sh and archives, found as scripts/test.sh finds it:
    FABRIC_ARCHIVES, else ../shared/fabric beside the repository, else beside the
    repository it was cloned from. Missing: the calling test fails."""
    candidates = [os.environ.get("FABRIC_ARCHIVES", ""), str(REPO.parent / "shared" / "fabric")]
    origin = subprocess.run(
        ["git", "config", "--get", "remote.origin.url"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if origin:
        candidates.append(str(Path(origin) / ".." / "shared" / "fabric"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "install.sh").is_file():
            return Path(candidate).resolve()
    pytest.fail(
        f"no Fabric archives (install.sh) in any of {[c for c in candidates if c]}: "
        "set FABRIC_ARCHIVES",
        pytrace=False,
    )


def fabric_release(
    folder: str | Path | None = None,
    *,
    bin_env: str = "FABRIC_BIN",
    cfg_env: str = "FABRIC_CFG_PATH",
    default: Path = FABRIC_25,
) -> FabricRelease:
    """The release named by `folder`, else by the env pair, else `default`; a missing
    binary fails the calling test with how to install it."""
    try:
        if folder is not None:
            return FabricRelease.locate(folder=folder)
        if os.environ.get(bin_env):
            return FabricRelease.locate(os.environ[bin_env], os.environ.get(cfg_env) or None)
        return FabricRelease.locate(folder=default)
    except FabricBinaryMissing as exc:
        pytest.fail(
            f"{exc}\nInstall the binaries with `bash ../shared/fabric/install.sh .fabric "
            f"[3.1.5]` (scripts/test.sh does) or set {bin_env}/{cfg_env}.",
            pytrace=False,
        )


def fabric_31_release() -> FabricRelease:
    return fabric_release(bin_env="FABRIC_31_BIN", cfg_env="FABRIC_31_CFG_PATH", default=FABRIC_31)


@dataclass
class RealLedgerNet:
    """What tests/support/ledger.py's LedgerNet offers, over a real network."""

    network: FabricNetwork

    @property
    def channel(self) -> str:
        return self.network.channel

    @property
    def version(self) -> str:
        return self.network.state.version

    def msp_dir(self, org: int = 1) -> Path:
        return self.network.msp_dir(org)

    def profile(self, org: int = 1) -> Path:
        return self.network.profile(org)

    def gateway(self, org: int = 1) -> GatewayClient:
        """A GatewayClient as User1 of `org` (with User1's TLS client certificate when
        the peers require one); closed when the module's network goes down."""
        return self.network.gateway(org)

    def close(self) -> None:
        self.network.close_clients()


@contextmanager
def real_network(
    directory: Path, release: FabricRelease, options: NetworkOptions | None = None
) -> Iterator[RealLedgerNet]:
    net = FabricNetwork(
        directory, release, options or NetworkOptions(batch_timeout=TEST_BATCH_TIMEOUT)
    )
    try:
        net.up()
        yield RealLedgerNet(net)
    finally:
        net.down()


@pytest.fixture(scope="module", name="real_sagafacts_net")
def real_sagafacts_net_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealLedgerNet]:
    params: dict[str, Any] = dict(getattr(request, "param", None) or {})
    release = fabric_release(params.pop("fabric", None))
    params.setdefault("batch_timeout", TEST_BATCH_TIMEOUT)
    with real_network(
        tmp_path_factory.mktemp("fabricnet"), release, NetworkOptions(**params)
    ) as net:
        yield net
