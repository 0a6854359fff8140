"""The runbooks' situations, made in process on a deployment.

**Situations** are made with the product's own code, in process, while no
relay runs (so nothing is published behind the test's back): the real
orchestrator drives a saga message by message from its outbox rows and the
test "loses" the message where the situation says (a purged queue, a dead
worker), the sweeper marks a saga stuck, a chain step is prepared by a worker
that dies before Submit, or submitted while no watcher runs.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kombu import Connection, Producer
from sqlalchemy import select, update

from saga.adapters.fabric import GatewayClient
from saga.adapters.rabbitmq import Topology, dead_letters, step_task_message
from saga.adapters.rabbitmq.topology import (
    DLQ_AT,
    DLQ_ERROR,
    DLQ_REASON,
    DLQ_ROUTING_KEY,
    DLQ_WORKER,
)
from saga.adapters.sql import TRANSIENT_ERRORS, SqlUnitOfWorkFactory
from saga.adapters.sql.tables import ledger_attempts, outbox, sagas
from saga.app import dlq
from saga.app.chain import ChainSettings
from saga.app.orchestrator import Orchestrator
from saga.app.sweeper import SweepConfig, Sweeper
from saga.core.definitions import Registry, Step
from saga.core.purpose import Purpose
from saga.core.retry import RetryPolicy
from saga.core.state import SagaStatus
from saga.core.step_message import StepMessage
from saga.examples import order_payment
from saga.ports.broker import PendingMessage
from saga.ports.ledger import VALID, LedgerError
from saga_devnet.cryptogen import Issuer, cert_pem, key_pem, make_leaf
from tests.support.runbook_blocks import RUNBOOKS, Block, read_blocks, run_block
from tests.support.runbook_deployment import Deployment
from tests.support.waiting import wait_for

LEDGER_STEP = "record_on_ledger"


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
        """Running at the chain step, one attempt PREPARED: its worker died before Submit,
        and no re-check message is left to drive it again (one goes out with the PREPARED
        row: here rechecks are off, SAGA_CHAIN_RECHECK_DELAY=0, as after a lost message)."""
        orch = self.orchestrator(ledger=DiesBeforeSubmit(self.d.client), recheck_delay=0)
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
        worker and replayed three times with `RabbitDeadLetters.replay`
        (it came back each time);
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
            phase=Purpose.DO,
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
            dead_letters.RabbitDeadLetters(d.settings).replay(
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


def run_runbook(runbook: str, deployment: Deployment, situations: Situations) -> None:
    """Run every sh block of the runbook in its situation; fail at the first command
    that exits otherwise than it should, or a situation whose saga does not end."""
    blocks = [b for b in read_blocks(RUNBOOKS / runbook) if b.language == "sh"]

    # Every situation of the runbook, made while no relay publishes anything.
    deployment.stop("relay", "watcher")
    deployment.start("worker")
    made: dict[tuple[str, int], Made] = {}
    for block in blocks:
        key = (block.situation, block.situation_line)
        if key not in made:
            made[key] = situations.make(block.situation, block.ends)
    deployment.start("relay", "api")

    last_block_of: dict[tuple[str, int], Block] = {}
    for block in blocks:
        last_block_of[(block.situation, block.situation_line)] = block
    for block in blocks:
        key = (block.situation, block.situation_line)
        hook = situations.hooks.get(block.situation)
        if hook is not None:
            hook()
        result = run_block(block, deployment.env(**made[key].variables), deployment.work)
        failure = result.failure()
        assert failure is None, failure + "\n" + deployment.report()
        if last_block_of[key] is block:
            situation = made[key]
            if situation.saga_id is not None and situation.ends is not None:
                deployment.wait_status(situation.saga_id, situation.ends)
            if situation.check is not None:
                situation.check()
