"""The telemetry port: services report through what they are given (nothing by
default), and the ledger port says why a commit-status wait went unanswered
without a gRPC code reaching the application."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from saga.adapters.fabric.errors import CommitStatusError
from saga.app.orchestrator import Orchestrator
from saga.app.outcome import Outcome
from saga.core.definitions import Registry
from saga.core.step_message import StepMessage
from saga.ports.ledger import StatusUnknown, Unanswered
from saga.ports.telemetry import NO_TELEMETRY, NoTelemetry, Telemetry
from tests.fakes import FakeDatabase
from tests.support.orchestrator_world import ORDER, Script, shop


class Recording(NoTelemetry):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def saga_enqueued(self, saga: str) -> None:
        self.events.append(("enqueued", saga))

    @contextmanager
    def step_running(self, kind: str, phase: object) -> Iterator[None]:
        self.events.append(("running", kind, str(phase)))
        yield

    def event_applied(self, before: Any, after: Any, event: Any) -> None:
        self.events.append(("applied", type(event).__name__))


def orchestrator(db: FakeDatabase, telemetry: Telemetry | None = None) -> Orchestrator:
    counter = itertools.count(1)
    registry = Registry([shop(Script())])
    new_id = lambda: f"id-{next(counter)}"  # noqa: E731
    if telemetry is None:
        return Orchestrator(registry, db.uow, new_id=new_id)
    return Orchestrator(registry, db.uow, new_id=new_id, telemetry=telemetry)


def test_a_service_built_by_hand_reports_to_nothing() -> None:
    db = FakeDatabase()
    orch = orchestrator(db)
    assert orch.writer.telemetry is NO_TELEMETRY
    assert orch.enqueue("shop", ORDER).created
    [message] = db.outbox_messages()
    assert orch.handle(StepMessage.from_body(message.body)) is Outcome.APPLIED


def test_the_telemetry_handed_in_hears_every_part() -> None:
    db, seen = FakeDatabase(), Recording()
    orch = orchestrator(db, seen)
    orch.enqueue("shop", ORDER)
    [message] = db.outbox_messages()
    orch.handle(StepMessage.from_body(message.body))
    assert seen.events == [
        ("enqueued", "shop"),
        ("running", "local", "do"),
        ("applied", "StepSucceeded"),
    ]


@pytest.mark.parametrize(
    ("code", "unanswered"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unanswered.DEADLINE),
        (grpc.StatusCode.UNAVAILABLE, Unanswered.UNREACHABLE),
        (grpc.StatusCode.CANCELLED, Unanswered.UNREACHABLE),
        (None, Unanswered.UNREACHABLE),
        (grpc.StatusCode.PERMISSION_DENIED, Unanswered.REFUSED),
        (grpc.StatusCode.NOT_FOUND, Unanswered.REFUSED),
    ],
)
def test_the_fabric_adapter_says_why_a_commit_status_went_unanswered(
    code: grpc.StatusCode | None, unanswered: Unanswered
) -> None:
    error = CommitStatusError(txid="ab" * 32, code=code, status_message="x")
    assert isinstance(error, StatusUnknown)
    assert error.unanswered is unanswered


def test_a_status_unknown_that_cannot_tell_is_unreachable() -> None:
    assert StatusUnknown("no answer", retryable=True).unanswered is Unanswered.UNREACHABLE
