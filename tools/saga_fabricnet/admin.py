"""Administrator commands, run through the release's own CLIs: ``osnadmin channel
join`` on the orderers, ``peer channel join`` and the chaincode lifecycle on the
peers. Each returns only once the command succeeded."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence

from saga_fabricnet import chaincode_package
from saga_fabricnet.material import Layout, Org
from saga_fabricnet.release import FabricRelease
from saga_fabricnet.state import NetworkState


class AdminCommandFailed(RuntimeError):
    pass


def _run(argv: Sequence[str], env: dict[str, str], what: str, timeout: float = 120.0) -> str:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AdminCommandFailed(f"{what} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout + result.stderr


def _retry(attempt: Callable[[], str], tries: int = 10, pause: float = 1.0) -> str:
    """Orderers need a moment to elect a leader and peers to open their services;
    the first calls after a start may fail for that reason alone."""
    for n in range(tries):
        try:
            return attempt()
        except AdminCommandFailed:
            if n == tries - 1:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


class Admin:
    def __init__(self, release: FabricRelease, layout: Layout, state: NetworkState) -> None:
        self.release = release
        self.layout = layout
        self.state = state

    # -- orderers ----------------------------------------------------------

    def orderer_admin_address(self, n: int) -> str:
        return f"127.0.0.1:{self.state.ports.orderers[n].admin}"

    def join_orderer(self, n: int) -> None:
        admin = self.layout.orderer_admin / "tls"
        argv = [
            str(self.release.binary("osnadmin")),
            *("channel", "join", "--channelID", self.state.options.channel),
            *("--config-block", str(self.layout.channel_block)),
            *("-o", self.orderer_admin_address(n)),
            *("--ca-file", str(self.layout.orderer_tls_ca)),
            *("--client-cert", str(admin / "client.crt")),
            *("--client-key", str(admin / "client.key")),
        ]
        env = {**os.environ, "FABRIC_CFG_PATH": str(self.layout.config)}
        what = f"osnadmin channel join on orderer{n}"

        def join() -> str:
            output = _run(argv, env, what)
            # osnadmin exits 0 whatever HTTP status the orderer answered: read it.
            if "Status: 201" in output or "channel already exists" in output:
                return output
            raise AdminCommandFailed(f"{what}: {output.strip()}")

        _retry(join, tries=30)

    # -- peers -------------------------------------------------------------

    def peer_env(self, org: Org, n: int = 0) -> dict[str, str]:
        admin = self.layout.user_dir(org, "Admin")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CORE_")},
            "FABRIC_CFG_PATH": str(self.layout.config),
            "FABRIC_LOGGING_SPEC": "WARNING",
            "CORE_PEER_LOCALMSPID": org.msp_id,
            "CORE_PEER_MSPCONFIGPATH": str(admin / "msp"),
            "CORE_PEER_ADDRESS": f"127.0.0.1:{self.state.ports.peer(org.index, n).listen}",
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_ROOTCERT_FILE": str(self.layout.org_tls_ca(org)),
            "CORE_PEER_TLS_CLIENTCERT_FILE": str(admin / "tls" / "client.crt"),
            "CORE_PEER_TLS_CLIENTKEY_FILE": str(admin / "tls" / "client.key"),
            "CORE_VM_ENDPOINT": "",
        }
        if self.state.options.client_auth_required:
            env["CORE_PEER_TLS_CLIENTAUTHREQUIRED"] = "true"
        return env

    def _peer(self, org: Org, args: Sequence[str], what: str, n: int = 0) -> str:
        return _run([str(self.release.binary("peer")), *args], self.peer_env(org, n), what)

    def _orderer_args(self) -> list[str]:
        return [
            "-o",
            f"127.0.0.1:{self.state.ports.orderers[0].listen}",
            "--tls",
            "--cafile",
            str(self.layout.orderer_tls_ca),
        ]

    def join_peer(self, org: Org, n: int = 0) -> None:
        args = ["channel", "join", "-b", str(self.layout.channel_block)]
        _retry(lambda: self._peer(org, args, f"peer channel join on {org.peer_host(n)}", n))

    def install(self, org: Org, n: int = 0) -> None:
        """Every peer of an org installs the package; all of them dial the one chaincode
        server (its connection.json address), each over its own stream."""
        package = str(self.layout.chaincode_package)
        query = ["lifecycle", "chaincode", "queryinstalled"]
        installed = self._peer(org, query, "queryinstalled", n)
        if self.state.package_id in installed:
            return
        args = ["lifecycle", "chaincode", "install", package]
        self._peer(org, args, f"install on {org.peer_host(n)}", n)

    def _definition(self) -> list[str]:
        return [
            "--channelID",
            self.state.options.channel,
            "--name",
            chaincode_package.NAME,
            "--version",
            chaincode_package.VERSION,
            "--sequence",
            "1",
        ]

    def approve(self, org: Org) -> None:
        # No --signature-policy: the definition takes the channel's default
        # /Channel/Application/Endorsement, MAJORITY of two orgs, i.e. both.
        args = [
            "lifecycle",
            "chaincode",
            "approveformyorg",
            *self._orderer_args(),
            *self._definition(),
            "--package-id",
            self.state.package_id,
        ]

        def attempt() -> str:
            try:
                return self._peer(org, args, f"approveformyorg for {org.msp_id}")
            except AdminCommandFailed as exc:
                # A retry after an approval that did commit.
                if "unchanged content" in str(exc):
                    return ""
                raise

        _retry(attempt)

    def commit(self, orgs: Sequence[Org]) -> None:
        args = ["lifecycle", "chaincode", "commit", *self._orderer_args(), *self._definition()]
        for org in orgs:
            args += [
                "--peerAddresses",
                f"127.0.0.1:{self.state.ports.peers[org.index].listen}",
                "--tlsRootCertFiles",
                str(self.layout.org_tls_ca(org)),
            ]

        def attempt() -> str:
            try:
                return self._peer(orgs[0], args, "lifecycle chaincode commit")
            except AdminCommandFailed as exc:
                if "new definition must be sequence 2" in str(exc):
                    return ""
                raise

        _retry(attempt)
