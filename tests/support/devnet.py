"""Fixtures (a plugin of tests/conftest.py) that run a real devnet process
(python -m saga_devnet up) on free ports.

    def test_x(devnet):                      # one devnet per test module, default config
        gw = devnet.client(1)                # RawGateway as User1@org1 over TLS
        devnet.profile(1)                    # Path of connection-org1.json
        devnet.set_faults(stall_commits=True)

    def test_y(devnet_factory):              # a fresh devnet per call, torn down after the test
                                             # (module_devnet_factory: torn down after the module)
        net = devnet_factory(batch_timeout=0.3, chaincodes={"facts": {"address": "..."}})
        net.kill(); net.start()              # SIGKILL and restart on the same DIR and ports

Overrides accepted by devnet_factory: any top-level key of devnet.yaml (channel,
batch_timeout, max_message_count, mutual_tls, chaincodes, orgs) plus `faults`, a list of
"name=value" strings passed as --fault on every start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga_devnet.rawclient import RawGateway
from tests.support.ports import free_ports

DEFAULT_ORGS = [
    {"name": "Org1", "msp_id": "Org1MSP", "domain": "org1.example.com"},
    {"name": "Org2", "msp_id": "Org2MSP", "domain": "org2.example.com"},
]
READY_TIMEOUT = 60.0


class Devnet:
    """A devnet process in its own directory. Ports and names stay fixed across restarts."""

    def __init__(self, directory: Path, overrides: dict[str, Any]) -> None:
        self.dir = directory
        self.faults: list[str] = list(overrides.pop("faults", []))
        orgs = [dict(o) for o in overrides.pop("orgs", DEFAULT_ORGS)]
        ports = free_ports(len(orgs) + 1)
        for org, port in zip(orgs, ports, strict=False):
            org.setdefault("port", port)
        self.admin_port = ports[-1]
        self.config: dict[str, Any] = {
            "channel": "mychannel",
            "batch_timeout": 0.5,
            "max_message_count": 10,
            "admin_port": self.admin_port,
            "orgs": orgs,
            "chaincodes": {"devkv": {"builtin": "kv", "policy": "MAJORITY Endorsement"}},
        }
        self.config.update(overrides)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "devnet.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.log_path = directory / "devnet.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: list[RawGateway] = []

    # -- process ----------------------------------------------------------------------------

    def start(self, *extra_faults: str) -> None:
        args = [sys.executable, "-m", "saga_devnet", "up", "--dir", str(self.dir)]
        for f in [*self.faults, *extra_faults]:
            args += ["--fault", f]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"devnet exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"devnet not ready after {READY_TIMEOUT}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait, as Ctrl-C would; returns the exit code."""
        self._close_clients()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        self._close_clients()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def restart(self, *extra_faults: str) -> None:
        self.stop()
        self.start(*extra_faults)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- admin API --------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            data=data if method == "POST" else None,
            method=method,
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def health(self) -> dict[str, Any]:
        return dict(self._admin("GET", "/health"))

    def set_faults(self, **knobs: Any) -> dict[str, Any]:
        return dict(self._admin("POST", "/faults", knobs))

    def reset_faults(self) -> dict[str, Any]:
        return dict(self._admin("POST", "/faults/reset", {}))

    def crash(self) -> None:
        """os._exit(137) inside the devnet, then reap it."""
        with contextlib.suppress(OSError):
            self._admin("POST", "/crash", {})
        self.wait_exit()

    # -- material ---------------------------------------------------------------------------

    def org(self, n: int) -> dict[str, Any]:
        return dict(self.config["orgs"][n - 1])

    def org_dir(self, n: int) -> Path:
        return self.dir / "organizations" / "peerOrganizations" / self.org(n)["domain"]

    def profile(self, n: int) -> Path:
        return self.org_dir(n) / f"connection-org{n}.json"

    def client(self, n: int = 1, user: str = "User1") -> RawGateway:
        org = self.org(n)
        gw = RawGateway.for_user(
            self.org_dir(n),
            msp_id=org["msp_id"],
            port=org["port"],
            user=user,
            channel=self.config["channel"],
            mutual_tls=bool(self.config.get("mutual_tls")),
        )
        self._clients.append(gw)
        return gw

    def _close_clients(self) -> None:
        for gw in self._clients:
            gw.close()
        self._clients.clear()


def _shutdown(net: Devnet) -> None:
    try:
        net.stop()
    except Exception:
        net.kill()


def _factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Devnet]]:
    started: list[Devnet] = []

    def make(**overrides: Any) -> Devnet:
        net = Devnet(tmp_path_factory.mktemp("devnet"), overrides)
        started.append(net)
        net.start()
        return net

    yield make
    for net in started:
        _shutdown(net)


@pytest.fixture
def devnet_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Devnet]]:
    """A fresh devnet per call, stopped when the test ends."""
    yield from _factory(tmp_path_factory)


@pytest.fixture(scope="module")
def module_devnet_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Devnet]]:
    """Same, stopped when the module ends: for a devnet configured once per module."""
    yield from _factory(tmp_path_factory)


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("devnet"), {})
    net.start()
    yield net
    _shutdown(net)
