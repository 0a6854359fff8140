"""The orchestrator's process set on one machine: `saga up`.

Reads compose/processes.toml, the file the compose deployment's commands are
checked against, and runs the same commands as child processes: the migration
job first, then every service (workers scaled to N), each restarted with a
backoff if it dies, as compose's `restart: unless-stopped` would. With no
SAGA_FABRIC_PROFILE it runs the devnet and the sagafacts chaincode too, on free
ports, with their state in the working directory.

    saga up --scale worker=3                  # Ctrl-C stops everything
    python -m saga.processes devnet-profile SRC DST HOST   # (compose) profile for another host
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

PROCESS_FILE = Path(__file__).resolve().parents[1] / "compose" / "processes.toml"
CHAINCODE_ID = "sagafacts_1.0:local"
ORG1_DOMAIN = "org1.example.com"
ORG2_DOMAIN = "org2.example.com"


class ProcessFileError(ValueError):
    pass


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    command: tuple[str, ...]
    job: bool = False
    scale: int = 1
    ledger: str | None = None
    after: tuple[str, ...] = ()


def load_processes(path: Path = PROCESS_FILE) -> list[ProcessSpec]:
    """The process set, in the file's order (the order `saga up` starts them)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProcessFileError(f"{path}: {exc}") from None
    specs: list[ProcessSpec] = []
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise ProcessFileError(f"{path}: [{name}] must be a table")
        unknown = set(entry) - {"command", "job", "scale", "ledger", "after"}
        if unknown:
            raise ProcessFileError(f"{path}: [{name}] has unknown keys {sorted(unknown)}")
        command = entry.get("command")
        if not (isinstance(command, list) and command and all(isinstance(w, str) for w in command)):
            raise ProcessFileError(f"{path}: [{name}] command must be a list of strings")
        specs.append(
            ProcessSpec(
                name=name,
                command=tuple(command),
                job=bool(entry.get("job", False)),
                scale=int(entry.get("scale", 1)),
                ledger=entry.get("ledger"),
                after=tuple(entry.get("after", ())),
            )
        )
    names = {s.name for s in specs}
    for spec in specs:
        missing = set(spec.after) - names
        if missing:
            raise ProcessFileError(f"{path}: [{spec.name}] after unknown {sorted(missing)}")
    return specs


def select(
    specs: Iterable[ProcessSpec], *, devnet: bool, without: Iterable[str] = ()
) -> list[ProcessSpec]:
    """The processes to run: devnet ones only with the devnet, minus `without`."""
    skip = set(without)
    return [
        s
        for s in specs
        if s.name not in skip and (s.ledger is None or (s.ledger == "devnet" and devnet))
    ]


def parse_scale(values: Iterable[str]) -> dict[str, int]:
    """`worker=3` (as `docker compose up --scale worker=3`)."""
    scale: dict[str, int] = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not count.isdigit():
            raise ValueError(f"--scale {value!r}: give NAME=COUNT, e.g. worker=3")
        scale[name.strip()] = int(count)
    return scale


def argv(command: Iterable[str]) -> list[str]:
    """The command under this interpreter, so `saga up` from a venv needs no PATH setup."""
    words = list(command)
    head = {
        "saga": [sys.executable, "-m", "saga"],
        "celery": [sys.executable, "-m", "celery"],
        "python": [sys.executable],
    }.get(words[0])
    return [*head, *words[1:]] if head else words


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host or "127.0.0.1", int(port))) == 0


def devnet_seed(
    cc_address: str, *, host: str = "127.0.0.1", batch_timeout: float = 0.5
) -> dict[str, Any]:
    """A devnet.yaml seed on free ports whose sagafacts chaincode is at `cc_address`."""
    return {
        "host": host,
        "batch_timeout": batch_timeout,
        "admin_port": free_port(),
        "orgs": [
            {"name": "Org1", "msp_id": "Org1MSP", "domain": ORG1_DOMAIN, "port": free_port()},
            {"name": "Org2", "msp_id": "Org2MSP", "domain": ORG2_DOMAIN, "port": free_port()},
        ],
        "chaincodes": {
            "sagafacts": {
                "address": cc_address,
                "package_id": CHAINCODE_ID,
                "policy": "MAJORITY Endorsement",
            }
        },
    }


def devnet_env(workdir: Path) -> dict[str, str]:
    """Write the devnet seed (once: the devnet keeps its first ports) and return the
    CHAINCODE_* and SAGA_FABRIC_* variables that point the processes at it."""
    seed = workdir / "devnet-seed.yaml"
    kept = workdir / "devnet" / "devnet.yaml"
    if kept.exists():
        config = yaml.safe_load(kept.read_text())
    elif seed.exists():
        config = yaml.safe_load(seed.read_text())
    else:
        config = devnet_seed(f"127.0.0.1:{free_port()}")
        seed.write_text(yaml.safe_dump(config))
    cc = config["chaincodes"]["sagafacts"]
    org_dir = workdir / "devnet" / "organizations" / "peerOrganizations" / ORG1_DOMAIN
    return {
        "CHAINCODE_ID": str(cc["package_id"]),
        "CHAINCODE_SERVER_ADDRESS": str(cc["address"]),
        "SAGA_FABRIC_PROFILE": str(org_dir / "connection-org1.json"),
        "SAGA_FABRIC_MSP_DIR": str(org_dir / "users" / f"User1@{ORG1_DOMAIN}" / "msp"),
    }


def readiness_address(name: str, env: Mapping[str, str], workdir: Path) -> str | None:
    """Where a service accepts connections once it is up (None: no port to wait for)."""
    if name == "chaincode":
        return env.get("CHAINCODE_SERVER_ADDRESS")
    if name == "devnet":
        for path in (workdir / "devnet" / "devnet.yaml", workdir / "devnet-seed.yaml"):
            if path.exists():
                return f"127.0.0.1:{yaml.safe_load(path.read_text())['orgs'][0]['port']}"
        return None
    if name == "api":
        return f"{env.get('SAGA_API_HOST', '127.0.0.1')}:{env.get('SAGA_API_PORT', '8080')}"
    if name == "flower":
        return f"{env.get('FLOWER_ADDRESS') or '127.0.0.1'}:{env.get('FLOWER_PORT', '5555')}"
    return None


@dataclass
class Child:
    spec: ProcessSpec
    index: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.spec.name}.{self.index}"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, env: Mapping[str, str], cwd: Path) -> None:
        if self._log is None or self._log.closed:
            self._log = self.log_path.open("ab")
        self._log.write(f"--- {time.strftime('%H:%M:%S')} start {self.label}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            argv(self.spec.command),
            cwd=cwd,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own group: a Celery worker's pool children stop with it.
            start_new_session=True,
        )

    def signal_group(self, signum: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signum)

    def wait_stopped(self, timeout: float) -> None:
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(timeout=30)
        # Pool children the leader left behind, once, while the group id is still ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()


class ProcessSetError(RuntimeError):
    pass


class LocalProcessSet:
    """The process set as children of this process; `stop()` ends every one."""

    def __init__(
        self,
        specs: Iterable[ProcessSpec],
        *,
        workdir: Path,
        env: Mapping[str, str],
        scale: Mapping[str, int] | None = None,
        say: Callable[[str], None] = lambda text: None,
        ready_timeout: float = 90.0,
    ) -> None:
        self.specs = list(specs)
        self.workdir = workdir
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.scale = dict(scale or {})
        self.say = say
        self.ready_timeout = ready_timeout
        self.children: list[Child] = []
        self._stopping = threading.Event()
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def log_path(self, label: str) -> Path:
        return self.workdir / "logs" / f"{label}.log"

    def start(self) -> None:
        """Run the jobs, then start the services in order, each `after` its dependencies."""
        ready: set[str] = set()
        for spec in self.specs:
            if spec.job:
                self._run_job(spec)
                continue
            for dep in spec.after:
                if dep in {s.name for s in self.specs} and dep not in ready:
                    self._wait_ready(dep)
                    ready.add(dep)
            for i in range(1, self.scale.get(spec.name, spec.scale) + 1):
                child = Child(spec, i, self.log_path(f"{spec.name}.{i}"))
                child.start(self.env, self.workdir)
                self.children.append(child)
                self.say(f"started {child.label} (pid {child.popen.pid if child.popen else '?'})")
        for spec in self.specs:
            if not spec.job and spec.name not in ready:
                self._wait_ready(spec.name)

    def _run_job(self, spec: ProcessSpec) -> None:
        log = self.log_path(spec.name)
        self.say(f"running {spec.name}: {' '.join(spec.command)}")
        with log.open("ab") as out:
            result = subprocess.run(
                argv(spec.command),
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=300,
                check=False,
            )
        if result.returncode != 0:
            raise ProcessSetError(f"{spec.name} exited with {result.returncode}; see {log}")

    def _wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            dead = [c for c in self.children if c.spec.name == name and not c.alive()]
            if dead:
                code = dead[0].popen.returncode if dead[0].popen else None
                raise ProcessSetError(
                    f"{dead[0].label} exited with {code} while starting; see {dead[0].log_path}"
                )
            address = readiness_address(name, self.env, self.workdir)
            if address is None or listening(address):
                return
            time.sleep(0.1)
        raise ProcessSetError(f"{name} did not accept connections within {self.ready_timeout}s")

    def supervise(self, stop: threading.Event, *, interval: float = 0.5) -> None:
        """Restart services that die, with a capped backoff, until `stop` is set."""
        while not stop.wait(interval):
            self.restart_dead()

    def restart_dead(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if self._stopping.is_set() or child.alive():
                continue
            if child.next_start == 0.0:
                code = child.popen.returncode if child.popen else None
                delay = min(30.0, 2.0 ** min(child.restarts, 5))
                child.next_start = now + delay
                self.say(f"{child.label} exited with {code}; restarting in {delay:.0f}s")
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                child.start(self.env, self.workdir)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "process": c.label,
                "pid": c.popen.pid if c.popen else None,
                "alive": c.alive(),
                "restarts": c.restarts,
                "log": str(c.log_path),
            }
            for c in self.children
        ]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM everything (newest first, so workers finish before the ledger goes)."""
        self._stopping.set()
        for child in reversed(self.children):
            child.signal_group(signal.SIGTERM)
        for child in reversed(self.children):
            child.wait_stopped(timeout)

    def __enter__(self) -> LocalProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_env(
    workdir: Path,
    specs: Iterable[ProcessSpec],
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every child: `base` (default: ours), plus the devnet's
    settings, an API token and the local addresses when they are not given."""
    env = dict(os.environ if base is None else base)
    names = {s.name for s in specs}
    if "devnet" in names:
        env.update(devnet_env(workdir))
    if "api" in names and not env.get("SAGA_API_TOKEN"):
        # Bearer auth stays on locally too: a fresh token, readable only by this user.
        token_file = workdir / "api-token"
        if not token_file.exists():
            token_file.write_text(secrets.token_urlsafe(24))
            token_file.chmod(0o600)
        env["SAGA_API_TOKEN"] = token_file.read_text().strip()
    if "flower" in names and not env.get("FLOWER_BASIC_AUTH"):
        raise ProcessSetError(
            "FLOWER_BASIC_AUTH is not set (user:password); Flower would show every task "
            "to anyone: set it, or leave Flower out with --without flower"
        )
    env.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    return env


def devnet_profile_for_host(source: Path, target: Path, host: str) -> None:
    """Copy a devnet connection profile with its peers' URLs on `host`.

    The devnet names its peers `localhost:<port>`, right for processes on its own
    machine; in compose they run in other containers and reach it by service
    name. TLS still checks the peer's name through ssl-target-name-override.
    """
    profile = json.loads(source.read_text())
    for peer in (profile.get("peers") or {}).values():
        url = str(peer.get("url", ""))
        scheme, sep, rest = url.rpartition("://")
        port = rest.rsplit(":", 1)[-1]
        peer["url"] = f"{scheme}{sep}{host}:{port}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile, indent=2))
    tmp.replace(target)


def run_up(
    *,
    workdir: Path,
    scale: Mapping[str, int],
    without: Iterable[str],
    process_file: Path,
    say: Callable[[str], None],
    stop: threading.Event,
) -> None:
    """`saga up`: start the set, print where things are, supervise until `stop`."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    specs = select(
        load_processes(process_file),
        devnet=not os.environ.get("SAGA_FABRIC_PROFILE"),
        without=without,
    )
    env = local_env(workdir, specs)
    with LocalProcessSet(specs, workdir=workdir, env=env, scale=scale, say=say) as procs:
        procs.start()
        say(f"logs in {workdir / 'logs'}")
        if any(s.name == "api" for s in specs):
            token = "SAGA_API_TOKEN" if os.environ.get("SAGA_API_TOKEN") else workdir / "api-token"
            say(f"API: http://{readiness_address('api', env, workdir)} (bearer token: {token})")
        if any(s.name == "flower" for s in specs):
            say(f"Flower: http://{readiness_address('flower', env, workdir)}")
        say("running; Ctrl-C stops every process")
        procs.supervise(stop)


def main(args: list[str] | None = None) -> int:
    words = sys.argv[1:] if args is None else args
    if len(words) == 4 and words[0] == "devnet-profile":
        devnet_profile_for_host(Path(words[1]), Path(words[2]), words[3])
        return 0
    print("usage: python -m saga.processes devnet-profile SRC DST HOST", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
