"""The orchestrator's test world: a scripted shop saga over the in-memory fakes."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saga.app.orchestrator import Orchestrator
from saga.app.steps import Outcome
from saga.core.definitions import Registry, SagaDefinition, Step, StepContext
from saga.core.retry import RetryPolicy
from saga.core.step_message import StepMessage
from tests.fakes import (
    FakeDatabase,
    FakeSession,
)


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: str = Field(min_length=1)
    amount: int = Field(gt=0)


class Declined(Exception):
    pass


class DriverGone(Exception):
    """Stands for a database driver's connection error."""


class Script:
    """What each step does on its next runs: None succeeds, an exception is raised."""

    def __init__(self) -> None:
        self.plan: dict[tuple[str, str], list[BaseException | None]] = defaultdict(list)
        self.calls: list[tuple[str, str, int]] = []

    def then(self, step: str, phase: str, *results: BaseException | None) -> Script:
        self.plan[(step, phase)].extend(results)
        return self

    def fn(self, step: str, phase: str) -> Any:
        def run(ctx: StepContext) -> dict[str, Any] | None:
            assert isinstance(ctx.session, FakeSession)
            self.calls.append((step, phase, ctx.attempt))
            # write first, fail after: a failure must take the write back with it
            ctx.session.insert("effects", saga=ctx.saga_id, step=step, phase=phase)
            queue = self.plan[(step, phase)]
            result = queue.pop(0) if queue else None
            if result is not None:
                raise result
            if phase == "do":
                return {"by": step, "seen": sorted(ctx.data)}
            return None

        return run


FAST = RetryPolicy(max_attempts=3, initial_backoff=0.5, non_retryable=("Declined",))


def shop(
    script: Script, version: int = 1, external: frozenset[str] = frozenset()
) -> SagaDefinition:
    """`external`: the steps declared to have effects outside their session."""
    steps = [
        Step(
            "reserve",
            script.fn("reserve", "do"),
            script.fn("reserve", "undo"),
            retry=FAST,
            external="reserve" in external,
        ),
        Step(
            "charge",
            script.fn("charge", "do"),
            script.fn("charge", "undo"),
            retry=FAST,
            external="charge" in external,
        ),
        Step("ship", script.fn("ship", "do"), pivot=True, retry=FAST, external="ship" in external),
        Step("notify", script.fn("notify", "do"), retry=FAST, external="notify" in external),
    ]
    if version == 2:
        steps.insert(
            2,
            Step(
                "audit",
                script.fn("audit", "do"),
                script.fn("audit", "undo"),
                external="audit" in external,
            ),
        )
    return SagaDefinition(
        name="shop", version=version, input_model=Order, steps=tuple(steps), errors=(Declined,)
    )


ORDER = {"order_id": "o-1", "amount": 5}


class World:
    def __init__(
        self, *versions: int, fuse: bool = True, external: frozenset[str] = frozenset()
    ) -> None:
        self.script = Script()
        self.db = FakeDatabase()
        self.registry = Registry([shop(self.script, v, external) for v in versions or (1,)])
        counter = itertools.count(1)
        self.orch = Orchestrator(
            self.registry,
            self.db.uow,
            new_id=lambda: f"id-{next(counter)}",
            transient_errors=(DriverGone,),
            fuse_steps=fuse,
        )
        self.delivered: set[str] = set()

    def messages(self) -> list[StepMessage]:
        return [StepMessage.from_body(m.body) for m in self.db.outbox_messages()]

    def next_message(self) -> StepMessage | None:
        for m in self.messages():
            if m.message_id not in self.delivered:
                return m
        return None

    def deliver_next(self) -> tuple[StepMessage, Outcome]:
        m = self.next_message()
        assert m is not None, "nothing to deliver"
        outcome = self.orch.handle(m)
        self.delivered.add(m.message_id)
        return m, outcome

    def drain(self, limit: int = 100) -> None:
        for _ in range(limit):
            if self.next_message() is None:
                return
            self.deliver_next()
        raise AssertionError("does not drain")

    def effects(self, saga_id: str) -> list[tuple[str, str]]:
        return [
            (r["step"], r["phase"])
            for r in self.db.business_rows("effects")
            if r["saga"] == saga_id
        ]

    def state(self, saga_id: str) -> Any:
        record = self.db.saga(saga_id)
        assert record is not None
        return record.state
