"""The chain step protocol's test world: a saga with a chain step over the in-memory fakes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from saga.app.chain import ChaincodeRefused, ChainSettings
from saga.app.orchestrator import Orchestrator
from saga.app.steps import Outcome
from saga.core.definitions import (
    ChainCall,
    Registry,
    SagaDefinition,
    Step,
    StepContext,
    StepKind,
)
from saga.core.retry import OutagePolicy, RetryPolicy
from saga.core.state import SagaStatus
from saga.core.step_message import StepMessage
from tests.fakes import FakeDatabase, FakeLedger


class Pay(BaseModel):
    order_id: str
    amount: str = "1250"
    fail_after: bool = False


class AfterFailed(Exception):
    pass


def _local(ctx: StepContext) -> Mapping[str, Any] | None:
    ctx.session.insert("events", saga_id=ctx.saga_id, step=ctx.step, action="do")
    return None


def _undo_local(ctx: StepContext) -> None:
    ctx.session.insert("events", saga_id=ctx.saga_id, step=ctx.step, action="undo")


def _after(ctx: StepContext) -> None:
    assert isinstance(ctx.input, Pay)
    if ctx.input.fail_after:
        raise AfterFailed("rejected")


def _args(ctx: StepContext) -> list[str]:
    assert isinstance(ctx.input, Pay)
    return [ctx.input.order_id, ctx.input.amount, "EUR", "c1"]


def definition(timeout: float = 30.0, attempts: int = 3) -> SagaDefinition:
    return SagaDefinition(
        name="pay",
        version=1,
        input_model=Pay,
        errors=(AfterFailed, ChaincodeRefused),
        steps=(
            Step("reserve", _local, compensation=_undo_local),
            Step(
                "ledger",
                kind=StepKind.CHAIN,
                chain=ChainCall(
                    "sagafacts",
                    "RecordPayment",
                    _args,
                    undo_function="ReversePayment",
                    undo_args=lambda ctx: ["undo"],
                ),
                retry=RetryPolicy(
                    max_attempts=attempts, initial_backoff=0, non_retryable=("ChaincodeRefused",)
                ),
                timeout=timeout,
            ),
            Step(
                "confirm",
                _after,
                pivot=True,
                retry=RetryPolicy(max_attempts=1, non_retryable=("AfterFailed",)),
            ),
        ),
    )


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 6, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class World:
    def __init__(
        self,
        *,
        timeout: float = 30.0,
        attempts: int = 3,
        ledger: bool = True,
        outage: OutagePolicy | None = None,
    ) -> None:
        self.clock = Clock()
        self.outage = outage or OutagePolicy(budget=60.0, first_delay=1.0, max_delay=10.0)
        self.db = FakeDatabase()
        self.ledger = FakeLedger()
        self.registry = Registry([definition(timeout, attempts)])
        self.orch = self.host("host-a") if ledger else Orchestrator(self.registry, self.db.uow)

    def host(self, name: str) -> Orchestrator:
        settings = ChainSettings(recheck_delay=1.0, worker=name, outage=self.outage)
        return Orchestrator(
            self.registry,
            self.db.uow,
            ledger=lambda: self.ledger,
            chain_settings=settings,
            clock=self.clock,
        )

    def next_message(self) -> StepMessage | None:
        for row in self.db.tables.outbox:
            if not row.published:
                row.published = True
                return StepMessage.from_body(row.message.body)
        return None

    def drive(self, *, cut: bool = True, limit: int = 100, tick: float = 0.0) -> list[Outcome]:
        """Handle messages until none is left; `tick` seconds pass before each."""
        outcomes = []
        for _ in range(limit):
            message = self.next_message()
            if message is None:
                return outcomes
            if cut:
                self.ledger.cut()
            self.clock.advance(tick)
            outcomes.append(self.orch.handle(message))
        raise AssertionError(f"saga did not settle in {limit} messages")

    def run(self, n: int) -> None:
        """Handle the next n messages, cutting no block."""
        for _ in range(n):
            message = self.next_message()
            assert message is not None
            self.orch.handle(message)

    def start(self, **payload: Any) -> str:
        return self.orch.enqueue("pay", {"order_id": "o-1", **payload}).saga_id

    def status(self, saga_id: str) -> SagaStatus:
        record = self.db.saga(saga_id)
        assert record is not None
        return record.state.status

    def attempts(self, purpose: str = "do") -> list[Any]:
        return [a for a in self.db.attempts() if a.purpose == purpose]
