"""The orchestrator's process set on one machine: `saga up`.

Reads compose/processes.toml, the file the compose deployment's commands are
checked against, and runs the same commands as child processes: the migration
job first, then every service (workers scaled to N), each restarted with a
backoff if it dies, as compose's `restart: unless-stopped` would. With no
SAGA_FABRIC_PROFILE it runs the devnet and the sagafacts chaincode too, on free
ports, with their state in the working directory.

What the supervisor adds per child: its own metrics port (SAGA_METRICS_PORT is
the first of a range; metrics-targets.json lists them), a worker's node name and
multiprocess directory per slot (worker1@host, metrics/worker.1), both kept
across restarts. Relative file settings are resolved against the caller's
directory before anything starts, since the children run in the working one.

    saga up --scale worker=3                  # Ctrl-C stops everything
    python -m saga.entrypoints.processes devnet-profile SRC DST HOST  # (compose) other host
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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import yaml

from saga.core.errors import SagaError

PROCESS_FILE = Path(__file__).resolve().parents[2] / "compose" / "processes.toml"
CHAINCODE_ID = "sagafacts_1.0:local"
# Services serving their own Prometheus endpoint on SAGA_METRICS_PORT (the API
# serves GET /metrics on its own port behind the token; the others serve none).
METRICS_SERVICES = frozenset({"relay", "worker", "watcher", "chain-executor"})
# The chain executor's queue, unless SAGA_CHAIN_QUEUE names one: the step queue's
# name + this, so two process sets on one broker never share it.
CHAIN_QUEUE_SUFFIX = ".chain"
# Services whose copies each need a name of their own: a Celery node name per slot
# (worker1@host), the same after a restart, so Flower shows one worker per slot
# rather than a new one, and an offline ghost, per restart.
NAMED_SERVICES = frozenset({"worker"})
# Settings that name files or directories: relative ones are made absolute before
# the children start in the working directory.
PATH_SETTINGS = (
    "SAGA_FABRIC_PROFILE",
    "SAGA_FABRIC_MSP_DIR",
    "SAGA_FABRIC_TLS_CERT",
    "SAGA_FABRIC_TLS_KEY",
)
ORG1_DOMAIN = "org1.example.com"
ORG2_DOMAIN = "org2.example.com"


class ProcessFileError(SagaError, ValueError):
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

    def argv(self) -> list[str]:
        words = argv(self.spec.command)
        if self.spec.name in NAMED_SERVICES:
            # %h: Celery puts the host name in.
            words += ["--hostname", f"{self.spec.name}{self.index}@%h"]
        return words

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, env: Mapping[str, str], cwd: Path) -> None:
        if self._log is None or self._log.closed:
            self._log = self.log_path.open("ab")
        self._log.write(f"--- {time.strftime('%H:%M:%S')} start {self.label}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv(),
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


class ProcessSetError(SagaError, RuntimeError):
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
        raw = self.env.get("SAGA_METRICS_PORT", "").strip() or "0"
        if not raw.isdigit() or int(raw) > 65535:
            raise ProcessSetError(
                f"SAGA_METRICS_PORT={raw!r}: give the first of consecutive free ports, one per "
                f"process serving metrics ({', '.join(sorted(METRICS_SERVICES))}), or 0 for none"
            )
        self.metrics_base = int(raw)
        self.metrics_address = self.env.get("SAGA_METRICS_ADDRESS") or "127.0.0.1"
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def log_path(self, label: str) -> Path:
        return self.workdir / "logs" / f"{label}.log"

    def plan(self) -> list[Child]:
        """Every copy of every service, in start order, not yet started."""
        return [
            Child(spec, i, self.log_path(f"{spec.name}.{i}"))
            for spec in self.specs
            if not spec.job
            for i in range(1, self.scale.get(spec.name, spec.scale) + 1)
        ]

    def metrics_ports(self) -> dict[str, int]:
        """Each metrics-serving child's port: SAGA_METRICS_PORT, +1, +2, ... ({}: off).

        Services with one copy come first, so `--scale worker=N` moves no other
        process's port.
        """
        if not self.metrics_base:
            return {}
        serving = [c for c in self.plan() if c.spec.name in METRICS_SERVICES]
        single = [c for c in serving if self.scale.get(c.spec.name, c.spec.scale) == 1]
        ordered = single + [c for c in serving if c not in single]
        return {c.label: self.metrics_base + n for n, c in enumerate(ordered)}

    def child_env(self, child: Child) -> dict[str, str]:
        """The set's environment, with this child's own metrics port (0: none).

        One SAGA_METRICS_PORT shared by every child would let the first bind it and
        every other log "Address already in use".
        """
        env = dict(self.env)
        port = self.metrics_ports().get(child.label, 0)
        env["SAGA_METRICS_PORT"] = str(port)
        if port and child.spec.name == "worker":
            # Per slot, kept across restarts: the worker drops a dead predecessor's
            # files at start, and a SIGKILL leaves no temporary directory behind.
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.workdir / "metrics" / child.label)
        return env

    def check_metrics_ports(self) -> None:
        """Fail before starting anything if a planned metrics port is taken."""
        ports = self.metrics_ports()
        for label, port in ports.items():
            with socket.socket() as s:
                try:
                    s.bind((self.metrics_address, port))
                except OSError as exc:
                    raise ProcessSetError(
                        f"port {port} for {label}'s metrics cannot be used ({exc.strerror}): "
                        f"set SAGA_METRICS_PORT to the first of {len(ports)} free consecutive "
                        "ports, or 0 for no metrics endpoints"
                    ) from None

    def metrics_targets(self) -> list[dict[str, Any]]:
        """One Prometheus scrape target per metrics-serving child (file_sd format)."""
        host = self.metrics_address
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return [
            {"targets": [f"{host}:{port}"], "labels": {"process": label}}
            for label, port in self.metrics_ports().items()
        ]

    @property
    def targets_file(self) -> Path:
        return self.workdir / "metrics-targets.json"

    def write_metrics_targets(self) -> Path:
        """metrics-targets.json in the working directory, for Prometheus' file_sd_configs."""
        path = self.targets_file
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.metrics_targets(), indent=2) + "\n")
        tmp.replace(path)
        return path

    def start(self) -> None:
        """Run the jobs, then start the services in order, each `after` its dependencies."""
        self.check_metrics_ports()
        if self.metrics_base:
            self.write_metrics_targets()
        planned = self.plan()
        ready: set[str] = set()
        for spec in self.specs:
            if spec.job:
                self._run_job(spec)
                continue
            for dep in spec.after:
                if dep in {s.name for s in self.specs} and dep not in ready:
                    self._wait_ready(dep)
                    ready.add(dep)
            for child in (c for c in planned if c.spec is spec):
                child.start(self.child_env(child), self.workdir)
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
                child.start(self.child_env(child), self.workdir)

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


def absolute_paths(env: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """`env` with relative file settings made absolute against `cwd`.

    The children run in the working directory (.saga-up/), so a path the operator
    gave relative to their shell would point inside it. Covers the SAGA_FABRIC_*
    paths and every SAGA_<setting>_FILE secret; an inline PEM is left as it is.
    """
    from saga.config import PREFIX, Settings

    names = set(PATH_SETTINGS) | {f"{PREFIX}{f.name.upper()}_FILE" for f in fields(Settings)}
    out = dict(env)
    for name in names:
        value = out.get(name, "")
        if value and not value.lstrip().startswith("-----BEGIN ") and not Path(value).is_absolute():
            out[name] = str(cwd / value)
    return out


def local_env(
    workdir: Path,
    specs: Iterable[ProcessSpec],
    base: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> dict[str, str]:
    """The environment of every child: `base` (default: ours) with relative paths
    resolved against `cwd` (default: ours), plus the devnet's settings, an API token
    and the local addresses when they are not given."""
    env = absolute_paths(os.environ if base is None else base, cwd or Path.cwd())
    names = {s.name for s in specs}
    if "devnet" in names:
        env.update(devnet_env(workdir))
    if "chain-executor" in names and not env.get("SAGA_CHAIN_QUEUE"):
        # Without it the relay would leave chain steps on the step queue (the workers
        # would run them) and the executor would refuse to start.
        step_queue = env.get("SAGA_STEP_QUEUE") or "saga.steps"
        env["SAGA_CHAIN_QUEUE"] = step_queue + CHAIN_QUEUE_SUFFIX
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
    profile = os.environ.get("SAGA_FABRIC_PROFILE")
    specs = select(load_processes(process_file), devnet=not profile, without=without)
    env = local_env(workdir, specs)
    if profile:
        say(
            f"SAGA_FABRIC_PROFILE is set: using that network ({env['SAGA_FABRIC_PROFILE']}), "
            "no devnet or chaincode started; unset it for the local devnet"
        )
    with LocalProcessSet(specs, workdir=workdir, env=env, scale=scale, say=say) as procs:
        procs.start()
        say(f"logs in {workdir / 'logs'}")
        for line in shell_lines(procs, env):
            say(line)
        say("running; Ctrl-C stops every process")
        procs.supervise(stop)


def shell_lines(procs: LocalProcessSet, env: Mapping[str, str]) -> list[str]:
    """Where things are, and the export line that points the operator's shell (saga
    commands, the runbooks' curl) at this API. The token is named by its file, so it
    stays out of terminals and captured output."""
    names = {s.name for s in procs.specs}
    workdir = procs.workdir
    lines: list[str] = []
    if "api" in names:
        url = f"http://{readiness_address('api', env, workdir)}"
        if os.environ.get("SAGA_API_TOKEN"):
            lines.append(f"API: {url} (bearer token: your SAGA_API_TOKEN)")
            lines.append(f"export SAGA_API_URL={url}")
        else:
            token_file = workdir / "api-token"
            lines.append(f"API: {url} (bearer token in {token_file})")
            lines.append(f'export SAGA_API_URL={url} SAGA_API_TOKEN="$(cat {token_file})"')
        lines.append(f"API metrics: {url}/metrics (bearer token)")
    targets = procs.metrics_targets()
    if targets:
        listed = ", ".join(f"{t['labels']['process']} {t['targets'][0]}" for t in targets)
        lines.append(f"metrics: {listed} (Prometheus file_sd: {procs.targets_file})")
    elif names & METRICS_SERVICES:
        lines.append(
            "metrics: off for relay, workers and watcher (SAGA_METRICS_PORT=9400 saga up "
            "gives each its own port from 9400)"
        )
    if "flower" in names:
        lines.append(f"Flower: http://{readiness_address('flower', env, workdir)}")
    return lines


def main(args: list[str] | None = None) -> int:
    words = sys.argv[1:] if args is None else args
    if len(words) == 4 and words[0] == "devnet-profile":
        devnet_profile_for_host(Path(words[1]), Path(words[2]), words[3])
        return 0
    print(
        "usage: python -m saga.entrypoints.processes devnet-profile SRC DST HOST", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
