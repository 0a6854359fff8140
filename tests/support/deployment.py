"""A test deployment for the runbooks, and the runbooks' shell blocks as data.

**Blocks.** Every fenced ```sh block of a runbook is run as written. The
conventions a runbook follows (runbooks/README.md states them for readers):

- ``<!-- situation: NAME -->`` (an HTML comment, invisible when rendered) names
  the situation the blocks after it are run in, until the next one; NAME is a
  key of ``Situations.builders``. A block before any such comment runs in
  ``healthy`` (the deployment as it is).
- A comment line ``# exits N while the problem lasts`` (the words after the
  number are free) says the *next* command exits with N, not 0: the test
  requires exactly N, so the symptom is checked too.
- Other ``#`` lines are comments; a line ending in ``\\`` continues.
- Commands of one block run in one bash process, in order (a variable set by
  one command is seen by the next), with ``pipefail``; the first command whose
  exit status is not the expected one fails the test, named with its runbook
  and line.
- ```console and ```text blocks are never run: they are for the operator's
  own environment (docker compose, rabbitmqctl, systemd).

**Deployment.** Real PostgreSQL (the session's test database), per-module
RabbitMQ queues, a devnet running the sagafacts chaincode, and the product's
processes (`saga relay`, `saga worker`, `saga api`, `saga watcher`) started
from the same commands an operator runs, each only when a runbook needs it.

**Situations** are made with the product's own code, in process, while no
relay runs (so nothing is published behind the test's back): the real
orchestrator drives a saga message by message from its outbox rows and the
test "loses" the message where the situation says (a purged queue, a dead
worker), the sweeper marks a saga stuck, a chain step is prepared by a worker
that dies before Submit, or submitted while no watcher runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kombu import Connection, Producer
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from saga.adapters.fabric import GatewayClient
from saga.adapters.rabbitmq import Topology, step_task_message
from saga.adapters.rabbitmq.topology import (
    DLQ_AT,
    DLQ_ERROR,
    DLQ_REASON,
    DLQ_ROUTING_KEY,
    DLQ_WORKER,
)
from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory, create_engine
from saga.adapters.sql.tables import ledger_attempts, outbox, sagas
from saga.app import dlq
from saga.app.chain import ChainSettings
from saga.app.orchestrator import Orchestrator
from saga.app.sweeper import SweepConfig, Sweeper
from saga.config import Settings
from saga.core.definitions import Registry, Step
from saga.core.retry import RetryPolicy
from saga.core.state import SagaStatus
from saga.core.step_message import Phase, StepMessage
from saga.examples import order_payment
from saga.ports.broker import PendingMessage
from saga.ports.ledger import VALID, LedgerError
from saga_devnet.cryptogen import Issuer, cert_pem, key_pem, make_leaf
from tests.support.ledger import LedgerNet
from tests.support.ports import free_port
from tests.support.processes import ROOT, Processes, SagaProcess, saga_env
from tests.support.waiting import wait_for

RUNBOOKS = ROOT / "runbooks"
DEFINITIONS = "saga.examples.order_payment_ledger"
LEDGER_STEP = "record_on_ledger"

_FENCE = re.compile(r"^```(\S*)\s*$")
_SITUATION = re.compile(r"<!--\s*situation:\s*([\w-]+)(?:\s*;\s*ends\s+(\w+))?\s*-->")
_EXPECT = re.compile(r"^#\s*exits\s+(\d+)\b")


# -- the runbooks' blocks --------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    text: str
    line: int
    expect: int = 0


@dataclass(frozen=True)
class Block:
    runbook: str
    line: int
    language: str
    situation: str
    commands: tuple[Command, ...]
    # Where the situation's comment is (0: none): blocks sharing it share one instance.
    situation_line: int = 0
    # The status its saga must reach once the blocks ran ("ends STATUS" in the comment).
    ends: str | None = None


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a runbook, with its situation and (for sh) its commands."""
    blocks: list[Block] = []
    situation, situation_line, ends = "healthy", 0, None
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        found = _SITUATION.search(lines[i])
        if found:
            situation, situation_line, ends = found.group(1), i + 1, found.group(2)
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, language = i + 1, fence.group(1)
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        commands = _commands(body) if language == "sh" else ()
        blocks.append(Block(path.name, start, language, situation, commands, situation_line, ends))
    return blocks


def _commands(body: list[tuple[int, str]]) -> tuple[Command, ...]:
    commands: list[Command] = []
    expect = 0
    pending: list[str] = []
    first = 0
    for number, raw in body:
        line = raw.rstrip()
        if not pending:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                wanted = _EXPECT.match(stripped)
                if wanted:
                    expect = int(wanted.group(1))
                continue
            first = number
        if line.endswith("\\"):
            pending.append(line)
            continue
        pending.append(line)
        commands.append(Command("\n".join(pending), first, expect))
        pending, expect = [], 0
    if pending:
        commands.append(Command("\n".join(pending), first, expect))
    return tuple(commands)


def runbook_paths() -> list[Path]:
    return sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")


@dataclass
class BlockRun:
    """What running one block gave: (command, exit status) in order, and the output."""

    block: Block
    statuses: list[tuple[Command, int]]
    output: str
    timed_out: bool

    def failure(self) -> str | None:
        for command, status in self.statuses:
            if status != command.expect:
                return self._describe(command, f"exited {status}, expected {command.expect}")
        if len(self.statuses) < len(self.block.commands):
            command = self.block.commands[len(self.statuses)]
            why = "timed out" if self.timed_out else "never finished (the shell exited)"
            return self._describe(command, why)
        return None

    def _describe(self, command: Command, why: str) -> str:
        return (
            f"runbooks/{self.block.runbook}:{command.line} (situation {self.block.situation}): "
            f"command {why}:\n    {command.text}\n"
            f"--- output of the block ---\n{self.output[-6000:]}"
        )


def _path_with_saga(env: dict[str, str]) -> str:
    """PATH with this interpreter's bin first, so `saga` is found without an activated venv."""
    path = env.get("PATH") or os.environ.get("PATH", "")
    return f"{Path(sys.executable).parent}{os.pathsep}{path}"


def run_block(block: Block, env: dict[str, str], cwd: Path, timeout: float = 150.0) -> BlockRun:
    """Run the block's commands in one bash, stopping at the first unexpected status."""
    status_file = cwd / f".status-{uuid.uuid4().hex[:8]}"
    parts = ["set -o pipefail"]
    for n, command in enumerate(block.commands):
        parts.append(f"echo '>>> runbooks/{block.runbook}:{command.line}' >&2")
        parts.append(command.text)
        parts.append(
            f'__rc=$?; echo "{n} $__rc" >> "$__RUNBOOK_STATUS"; '
            f'[ "$__rc" -eq {command.expect} ] || exit 99'
        )
    script = "\n".join(parts) + "\n"
    timed_out = False
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=cwd,
            env={**env, "__RUNBOOK_STATUS": str(status_file), "PATH": _path_with_saga(env)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        output = result.stdout
    except subprocess.TimeoutExpired as exc:
        timed_out = True
        raw = exc.stdout or b""
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    statuses: list[tuple[Command, int]] = []
    with contextlib.suppress(FileNotFoundError):
        for line in status_file.read_text().splitlines():
            index, status = line.split()
            statuses.append((block.commands[int(index)], int(status)))
        status_file.unlink()
    return BlockRun(block, statuses, output, timed_out)


# -- the deployment --------------------------------------------------------------------


@dataclass
class Deployment:
    settings: Settings
    net: LedgerNet
    procs: Processes
    work: Path
    _engine: Engine | None = None
    _client: GatewayClient | None = None
    _running: dict[str, SagaProcess] = field(default_factory=dict)

    @classmethod
    def build(
        cls, pg_url: str, amqp_url: str, net: LedgerNet, work: Path, procs: Processes
    ) -> Deployment:
        prefix = f"runbooks.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        settings = Settings(
            database_url=pg_url,
            broker_url=amqp_url,
            definitions=DEFINITIONS,
            step_queue=f"{prefix}.steps",
            dead_letter_queue=f"{prefix}.dead-letter",
            relay_poll_interval=0.05,
            worker_concurrency=2,
            api_port=free_port(),
            api_token="runbook-test-token",
            log_level="INFO",
            fabric_profile=str(net.devnet.profile(1)),
            fabric_msp_dir=str(net.msp_dir(1)),
            fabric_channel=net.channel,
            chain_recheck_delay=1.0,
        )
        return cls(settings, net, procs, work)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.settings)
        return self._engine

    @property
    def client(self) -> GatewayClient:
        if self._client is None:
            self._client = self.net.gateway()
        return self._client

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def env(self, **variables: str) -> dict[str, str]:
        """What the runbook's shell sees: SAGA_* of this deployment plus the variables."""
        return saga_env(
            self.settings, SAGA_LOG_LEVEL="WARNING", SAGA_API_URL=self.api_url, **variables
        )

    # -- processes ---------------------------------------------------------------------

    def start(self, *names: str) -> None:
        for name in names:
            process = self._running.get(name)
            if process is not None and process.alive():
                continue
            if name == "relay":
                process = self.procs.relay(self.settings)
            elif name == "worker":
                process = self.procs.worker(self.settings, concurrency=2)
            elif name == "watcher":
                process = self.procs.spawn(
                    "watcher", ["saga", "watcher", "--poll-interval", "0.2"], self.settings
                )
            elif name == "api":
                process = self.procs.spawn("api", ["saga", "api"], self.settings)
                wait_for(
                    self._api_up, timeout=60, what="the API", alive=[process], report=self.report
                )
            else:
                raise ValueError(f"no process {name!r}")
            self._running[name] = process

    def stop(self, *names: str) -> None:
        for name in names:
            process = self._running.pop(name, None)
            if process is not None:
                process.stop(timeout=20)

    def _api_up(self) -> bool:
        try:
            request = urllib.request.Request(
                f"{self.api_url}/metrics",
                headers={"Authorization": f"Bearer {self.settings.api_token}"},
            )
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def report(self) -> str:
        return self.procs.report()

    def close(self) -> None:
        self.procs.stop_all(timeout=20)
        if self._engine is not None:
            self._engine.dispose()

    # -- reading the store -------------------------------------------------------------

    def status(self, saga_id: str) -> SagaStatus:
        with self.engine.connect() as c:
            value = c.execute(select(sagas.c.status).where(sagas.c.id == saga_id)).scalar_one()
        return SagaStatus(value)

    def wait_status(self, saga_id: str, status: SagaStatus, timeout: float = 60.0) -> None:
        wait_for(
            lambda: self.status(saga_id) is status,
            timeout=timeout,
            what=f"saga {saga_id} {status}",
            report=self.report,
        )

    def attempt_states(self, saga_id: str) -> list[tuple[str, str, int | None]]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(ledger_attempts.c.txid, ledger_attempts.c.state, ledger_attempts.c.code)
                .where(ledger_attempts.c.saga_id == saga_id)
                .order_by(ledger_attempts.c.created_at)
            )
            return [(r.txid, r.state, r.code) for r in rows]


# -- situations ------------------------------------------------------------------------


class WorkerGone(BaseException):
    """The worker process died here (nothing handles it)."""


class DiesBeforeSubmit:
    """The real Gateway client, except that Submit never happens: the worker died."""

    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise WorkerGone

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class SubmitAnswersNo:
    """The real Gateway client, except that Submit fails with an answer that is no outage
    (the chain step cannot tell whether its transaction went out)."""

    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise LedgerError("orderer proxy closed the stream after the request (injected)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class PartnerDown(Exception):
    """The notification partner refuses for good (the failed-saga situation)."""


def _partner_down(ctx: Any) -> None:
    raise PartnerDown(f"mail partner rejected order {ctx.input.order_id}: account suspended")


def _refused_reversal(ctx: Any) -> list[str]:
    # A control character: the chaincode refuses the reversal (INVALID_ARGUMENT) for good.
    return [f"saga {ctx.saga_id} compensated\x07"]


def _reversal_refused(registry: Registry) -> Registry:
    """The ledger saga, whose reversal of record_on_ledger the chaincode refuses, with no
    retry (in this process only; the deployment's workers send a good reversal)."""
    broken = Registry()
    broken.add(registry.get(order_payment.NAME, 1))
    definition = registry.get(order_payment.NAME, 2)
    steps = tuple(
        replace(
            s,
            chain=replace(s.chain, undo_args=_refused_reversal),
            compensation_retry=RetryPolicy(max_attempts=1),
        )
        if s.name == LEDGER_STEP and s.chain is not None
        else s
        for s in definition.steps
    )
    broken.add(replace(definition, steps=steps))
    return broken


def _registry(*, notify_fails: bool = False, reversal_refused: bool = False) -> Registry:
    registry = order_payment.register_with_ledger(Registry())
    if reversal_refused:
        return _reversal_refused(registry)
    if not notify_fails:
        return registry
    # The same saga, whose notification partner refuses for good (in this process only).
    broken = Registry()
    for version in (1, 2):
        definition = registry.get(order_payment.NAME, version)
        steps = tuple(
            replace(s, action=_partner_down, retry=RetryPolicy(max_attempts=1))
            if s.name == "notify_customer"
            else s
            for s in definition.steps
        )
        assert all(isinstance(s, Step) for s in steps)
        broken.add(replace(definition, steps=steps, errors=(*definition.errors, PartnerDown)))
    return broken


def payment(tag: str) -> dict[str, Any]:
    return {
        "order_id": f"rb-{tag}-{uuid.uuid4().hex[:6]}",
        "customer_id": "c-7",
        "amount_cents": 1999,
        "currency": "EUR",
    }


Lose = Callable[[StepMessage], bool]


@dataclass
class Made:
    """A situation made: the shell variables it sets, and what must hold once its
    blocks ran (its saga's final status, a check)."""

    variables: dict[str, str]
    saga_id: str | None = None
    ends: SagaStatus | None = None
    check: Callable[[], None] | None = None


class Situations:
    """Builders of the runbooks' situations; each returns the shell variables it sets.

    Call them while no relay runs (`Deployment.stop("relay")`).
    """

    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        self.builders: dict[str, Callable[[], dict[str, str]]] = {
            "healthy": self.healthy,
            "local-step-lost": self.local_step_lost,
            "chain-prepared": self.chain_prepared,
            "chain-in-doubt": self.chain_in_doubt,
            "compensating-lost": self.compensating_lost,
            "stuck-marked": self.stuck_marked,
            "failed-after-pivot": self.failed_after_pivot,
            "compensation-failed": self.compensation_failed,
            "submitted-valid": self.submitted_valid,
            "submitted-valid-watcher": self.submitted_valid_watcher,
            "dead-letters": self.dead_letters,
            "new-certificate": self.new_certificate,
        }
        # Run right before a block of the situation (not when it is made).
        self.hooks: dict[str, Callable[[], None]] = {
            "submitted-valid": lambda: deployment.stop("watcher"),
            "submitted-valid-watcher": lambda: deployment.start("watcher"),
        }
        self._ends: tuple[str, SagaStatus] | None = None
        self._check: Callable[[], None] | None = None

    def make(self, name: str, ends: str | None = None) -> Made:
        """Make the situation `name`; `ends` overrides the status its saga must reach."""
        self._ends, self._check = None, None
        variables = self.builders[name]()
        made = Made(variables, check=self._check)
        if self._ends is not None:
            made.saga_id, made.ends = self._ends
        if ends is not None:
            made.ends = SagaStatus(ends)
        return made

    # -- driving a saga in process -----------------------------------------------------

    def orchestrator(
        self,
        *,
        ledger: Any = None,
        recheck_delay: float = 0.3,
        notify_fails: bool = False,
        reversal_refused: bool = False,
    ) -> Orchestrator:
        d = self.d
        client = ledger if ledger is not None else d.client
        return Orchestrator(
            _registry(notify_fails=notify_fails, reversal_refused=reversal_refused),
            SqlUnitOfWorkFactory(d.engine),
            transient_errors=TRANSIENT_ERRORS,
            ledger=lambda: client,
            chain_settings=ChainSettings(channel=d.net.channel, recheck_delay=recheck_delay),
        )

    def drive(
        self,
        orch: Orchestrator,
        saga_id: str,
        *,
        lose: Lose = lambda m: False,
        until: Callable[[], bool] = lambda: False,
        timeout: float = 60.0,
    ) -> None:
        """Handle the saga's outbox rows in order (taking each off the outbox, as the
        relay would); a row `lose` picks is taken and never handled. Returns once a
        message was lost, `until()` holds, or the saga is terminal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until() or self.d.status(saga_id).terminal:
                return
            with self.d.engine.begin() as c:
                row = c.execute(
                    select(outbox.c.id, outbox.c.body)
                    .where(outbox.c.saga_id == saga_id, outbox.c.published_at.is_(None))
                    .order_by(outbox.c.id)
                    .limit(1)
                ).first()
                if row is not None:
                    c.execute(
                        update(outbox)
                        .where(outbox.c.id == row.id)
                        .values(published_at=datetime.now(UTC))
                    )
            if row is None:
                time.sleep(0.1)
                continue
            message = StepMessage.from_body(row.body)
            if lose(message):
                return
            orch.handle(message)
        raise AssertionError(f"saga {saga_id}: situation not reached in {timeout:.0f}s")

    def idle_since(self, saga_id: str, ago: timedelta) -> None:
        """No progress for `ago` (instead of waiting that long)."""
        with self.d.engine.begin() as c:
            c.execute(
                update(sagas)
                .where(sagas.c.id == saga_id)
                .values(updated_at=datetime.now(UTC) - ago)
            )

    def _lost_at(self, step: str, tag: str) -> str:
        orch = self.orchestrator()
        saga_id = orch.enqueue(order_payment.NAME, payment(tag)).saga_id
        self.drive(orch, saga_id, lose=lambda m: m.step == step)
        self.idle_since(saga_id, timedelta(hours=1))
        return saga_id

    def _expect(self, saga_id: str, status: SagaStatus) -> None:
        self._ends = (saga_id, status)

    # -- the situations ----------------------------------------------------------------

    def healthy(self) -> dict[str, str]:
        """A deployment that works: one completed saga to look at."""
        orch = self.orchestrator()
        saga_id = orch.enqueue(order_payment.NAME, payment("ok")).saga_id
        self.drive(orch, saga_id)
        assert self.d.status(saga_id) is SagaStatus.COMPLETED
        return {"SAGA_ID": saga_id}

    def local_step_lost(self) -> dict[str, str]:
        """Running at record_payment (a local step) for an hour: its message was lost."""
        saga_id = self._lost_at("record_payment", "local")
        self._expect(saga_id, SagaStatus.COMPLETED)
        return {"SAGA_ID": saga_id}

    def chain_prepared(self) -> dict[str, str]:
        """Running at the chain step, one attempt PREPARED: its worker died before Submit."""
        orch = self.orchestrator(ledger=DiesBeforeSubmit(self.d.client))
        saga_id = orch.enqueue(order_payment.NAME, payment("prepared")).saga_id
        with contextlib.suppress(WorkerGone):
            self.drive(orch, saga_id)
        states = [s for _, s, _ in self.d.attempt_states(saga_id)]
        assert states == ["prepared"], states
        self.idle_since(saga_id, timedelta(hours=1))
        self._expect(saga_id, SagaStatus.COMPLETED)
        return {"SAGA_ID": saga_id}

    def chain_in_doubt(self) -> dict[str, str]:
        """Failed in doubt: the chain step's one transaction PREPARED an hour ago (its
        worker died before Submit), every resubmission since answered with an error that
        is no outage, and the step gave up with its outcome unknown. The ledger has not
        got the transaction."""
        saga_id = self.chain_prepared()["SAGA_ID"]
        with self.d.engine.begin() as c:
            c.execute(
                update(ledger_attempts)
                .where(ledger_attempts.c.saga_id == saga_id)
                .values(created_at=datetime.now(UTC) - timedelta(hours=1))
            )
        orch = self.orchestrator(ledger=SubmitAnswersNo(self.d.client))
        orch.retry(saga_id, actor="sweeper", why="idle past its timeout")
        self.drive(orch, saga_id)
        assert self.d.status(saga_id) is SagaStatus.FAILED
        assert [s for _, s, _ in self.d.attempt_states(saga_id)] == ["prepared"]
        self._expect(saga_id, SagaStatus.COMPLETED)
        return {"SAGA_ID": saga_id}

    def compensating_lost(self) -> dict[str, str]:
        """Compensating (customer cancelled), the undo message of record_payment lost."""
        orch = self.orchestrator()
        saga_id = orch.enqueue(order_payment.NAME, payment("undo")).saga_id
        self.drive(orch, saga_id, lose=lambda m: m.step == LEDGER_STEP)
        orch.compensate(saga_id, actor="support", why="customer cancelled, ticket OPS-77")
        self.drive(orch, saga_id, lose=lambda m: True)
        assert self.d.status(saga_id) is SagaStatus.COMPENSATING
        self.idle_since(saga_id, timedelta(hours=1))
        self._expect(saga_id, SagaStatus.COMPENSATED)
        return {"SAGA_ID": saga_id}

    def stuck_marked(self) -> dict[str, str]:
        """Marked stuck by the sweeper: re-driven once, the re-drive lost too, no progress."""
        saga_id = self._lost_at("record_payment", "stuck")
        sweeper = Sweeper(
            SqlUnitOfWorkFactory(self.d.engine),
            _registry(),
            SweepConfig(grace=600, redrive_interval=0, max_redrives=1),
            backlog=lambda: 0,
        )
        assert sweeper.sweep(saga_id=saga_id).redriven == [saga_id]
        self.drive(self.orchestrator(), saga_id, lose=lambda m: True)  # lost again
        assert sweeper.sweep(saga_id=saga_id).marked_stuck == [saga_id]
        assert self.d.status(saga_id) is SagaStatus.FAILED
        self._expect(saga_id, SagaStatus.COMPLETED)
        return {"SAGA_ID": saga_id}

    def failed_after_pivot(self) -> dict[str, str]:
        """Failed: notify_customer (after the pivot) failed for good; the partner is back."""
        orch = self.orchestrator(notify_fails=True)
        saga_id = orch.enqueue(order_payment.NAME, payment("failed")).saga_id
        self.drive(orch, saga_id)
        assert self.d.status(saga_id) is SagaStatus.FAILED
        self._expect(saga_id, SagaStatus.COMPLETED)
        return {"SAGA_ID": saga_id}

    def compensation_failed(self) -> dict[str, str]:
        """Failed while going back: the order was rejected at confirm_order (the business
        cause), and the reversal of record_on_ledger was refused for good (the step to
        fix, compensation_failed). The refusal is mended: resumed, it compensates."""
        orch = self.orchestrator(reversal_refused=True)
        saga_id = orch.enqueue(
            order_payment.NAME, {**payment("refused"), "simulate": "reject_order"}
        ).saga_id
        self.drive(orch, saga_id)
        record, _ = orch.get(saga_id)
        state = record.state
        current = state.steps[state.current]
        assert state.status is SagaStatus.FAILED, state
        assert (current.name, str(current.status)) == (LEDGER_STEP, "compensation_failed")
        self._expect(saga_id, SagaStatus.COMPENSATED)
        return {"SAGA_ID": saga_id}

    def submitted_valid(self) -> dict[str, str]:
        """The chain step SUBMITTED in the database, VALID on the ledger: no watcher ran."""
        orch = self.orchestrator(recheck_delay=0)  # only the watcher would re-drive it
        saga_id = orch.enqueue(order_payment.NAME, payment("valid")).saga_id
        self.drive(
            orch,
            saga_id,
            until=lambda: any(s == "submitted" for _, s, _ in self.d.attempt_states(saga_id)),
        )
        ((txid, _, _),) = self.d.attempt_states(saga_id)
        deadline = time.monotonic() + 30
        while self.d.client.commit_status(self.d.net.channel, txid).code != VALID:
            assert time.monotonic() < deadline, f"{txid} never committed"
            time.sleep(0.2)
        self.idle_since(saga_id, timedelta(minutes=10))
        self._expect(saga_id, SagaStatus.COMPLETED)
        return {"SAGA_ID": saga_id, "TXID": txid}

    def submitted_valid_watcher(self) -> dict[str, str]:
        """The same; its hook starts the watcher again (as the operator would)."""
        return self.submitted_valid()

    def dead_letters(self) -> dict[str, str]:
        """Three dead letters: a good step message a worker with older definitions refused
        (its saga waits); one naming a saga no database has, dead-lettered by the real
        worker and replayed three times with `saga.app.dlq.replay` (it came back each time);
        and a binary body with no headers and no id, dead-lettered by the real worker."""
        d = self.d
        saga_id = self._lost_at("record_payment", "dlq")
        with d.engine.connect() as c:
            body = c.execute(
                select(outbox.c.body)
                .where(outbox.c.saga_id == saga_id)
                .order_by(outbox.c.id.desc())
                .limit(1)
            ).scalar_one()
        task = step_task_message(PendingMessage(0, body["message_id"], saga_id, body))
        topology = Topology.from_settings(d.settings)
        headers = {
            **task.headers,
            DLQ_REASON: "unknown saga 'order-payment' v2 (this worker knows v1)",
            DLQ_ERROR: "UnknownSaga",
            DLQ_AT: datetime.now(UTC).isoformat(),
            DLQ_ROUTING_KEY: d.settings.step_queue,
            DLQ_WORKER: "saga-old@worker-7",
        }
        forged = StepMessage(
            message_id=str(uuid.uuid4()),
            saga_id=str(uuid.uuid4()),
            saga=order_payment.NAME,
            version=2,
            step="reserve_funds",
            attempt=1,
            phase=Phase.DO,
        ).to_body()
        forged_task = step_task_message(
            PendingMessage(0, forged["message_id"], forged["saga_id"], forged)
        )
        with Connection(d.settings.broker_url) as connection:
            topology.declare_kombu(connection)
            producer = Producer(connection.default_channel)
            producer.publish(
                task.body,
                exchange=topology.kombu_dead_letter_exchange(),
                routing_key=topology.dead_letter_routing_key,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=task.task_id,
            )
            d.start("worker")
            producer.publish(
                forged_task.body,
                exchange=topology.kombu_step_exchange(),
                routing_key=topology.step_routing_key,
                headers=forged_task.headers,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=forged_task.task_id,
            )
            producer.publish(
                b"\x00\x01not a task\xff\xfe",
                exchange=topology.kombu_step_exchange(),
                routing_key=topology.step_routing_key,
                headers={},
                content_type="application/octet-stream",
                content_encoding="binary",
                delivery_mode=2,
            )

        def all_back() -> None:
            wait_for(
                lambda: _queue_depth(d.settings.broker_url, d.settings.dead_letter_queue) >= 3,
                timeout=60,
                what="the forged and the binary message dead-lettered by the worker",
                report=d.report,
            )

        all_back()
        for n in range(1, 4):
            dlq.replay(
                d.settings,
                dlq.Selection(ids=frozenset({forged_task.task_id})),
                replayer=dlq.Replayer(actor="ops-test", why=f"situation: replay {n}"),
            )
            all_back()
        self._expect(saga_id, SagaStatus.COMPLETED)
        return {"SAGA_ID": saga_id, "MESSAGE_ID": task.task_id}

    def new_certificate(self) -> dict[str, str]:
        """The client's MSP folder (a copy the block may change) and a new certificate
        with its key, issued by the org's CA, in NEW_MSP_DIR."""
        d = self.d
        variables = self.healthy()
        current = Path(d.settings.fabric_msp_dir)
        folder = d.work / f"msp-{uuid.uuid4().hex[:6]}"
        shutil.copytree(current, folder / "msp")
        new = folder / "new-msp"
        shutil.copytree(current, new)
        ca_dir = d.net.devnet.org_dir(1) / "ca"
        ca_cert = x509.load_pem_x509_certificate(next(ca_dir.glob("*-cert.pem")).read_bytes())
        ca_key = serialization.load_pem_private_key((ca_dir / "priv_sk").read_bytes(), None)
        domain = d.net.devnet.org(1)["domain"]
        cert, key = make_leaf(
            Issuer(ca_cert, ca_key),  # type: ignore[arg-type]
            f"User1@{domain}",
            ou="client",
            tls=False,
        )
        for sub in ("signcerts", "keystore"):
            shutil.rmtree(new / sub)
            (new / sub).mkdir()
        (new / "signcerts" / f"User1@{domain}-cert.pem").write_bytes(cert_pem(cert))
        (new / "keystore" / "priv_sk").write_bytes(key_pem(key))
        (new / "keystore" / "priv_sk").chmod(0o600)
        msp = folder / "msp"

        def check() -> None:
            installed = [
                x509.load_pem_x509_certificate(p.read_bytes()).serial_number
                for p in (msp / "signcerts").glob("*.pem")
            ]
            assert installed == [cert.serial_number], "the new certificate is in place"

        self._check = check
        return {**variables, "SAGA_FABRIC_MSP_DIR": str(msp), "NEW_MSP_DIR": str(new)}


def _queue_depth(url: str, queue: str) -> int:
    from tests.support.rabbitmq import queue_depth

    try:
        return queue_depth(url, queue)
    except Exception:
        return 0


@contextlib.contextmanager
def quiet(deployment: Deployment) -> Iterator[None]:
    """No relay while a situation is made (nothing is published behind the test's back)."""
    deployment.stop("relay")
    yield


__all__ = [
    "RUNBOOKS",
    "Block",
    "BlockRun",
    "Command",
    "Deployment",
    "Made",
    "Situations",
    "quiet",
    "read_blocks",
    "run_block",
    "runbook_paths",
]
