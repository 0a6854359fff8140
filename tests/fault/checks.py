"""What every fault test checks in the DATABASE afterwards, and how it waits.

- `wait_terminal` waits (bounded) until every saga is terminal; on timeout it
  fails with a listing of the stuck sagas (status, current step, each step's
  attempts and last error, business rows, latest history) and the process logs.
- `check_sagas` compares each saga's status and its business rows in
  `order_payment_events` (which has no uniqueness constraint, so a doubled
  effect is a second row) with what was expected, and checks the history: no
  step or compensation succeeded twice, compensations ran in reverse order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.sql.tables import outbox, saga_history, saga_steps, sagas
from saga.app.orchestrator import Orchestrator
from saga.examples.order_payment import NAME
from saga.examples.order_payment_tables import order_payment_events
from tests.support.processes import SagaProcess
from tests.support.waiting import wait_for

TERMINAL = ("completed", "compensated", "failed")

PAID = ["reserve", "payment", "confirm", "notify"]
DECLINED = ["reserve", "release"]
REJECTED = ["reserve", "payment", "void", "release"]


MIX = ("none", "none", "none", "decline_payment", "reject_order", "flaky_notify")


def enqueue_mix(
    orch: Orchestrator, tag: str, n: int, scenarios: Sequence[str] = MIX
) -> dict[str, tuple[str, list[str]]]:
    """Start n order-payment sagas cycling through `scenarios`; return what each must end as."""
    expected: dict[str, tuple[str, list[str]]] = {}
    for i in range(n):
        simulate = scenarios[i % len(scenarios)]
        saga_id = orch.enqueue(NAME, payment(tag, i, simulate)).saga_id
        expected[saga_id] = expected_for(simulate)
    return expected


def expected_for(simulate: str) -> tuple[str, list[str]]:
    """(status, business actions in order) for an order-payment saga."""
    if simulate == "decline_payment":
        return "compensated", DECLINED
    if simulate == "reject_order":
        return "compensated", REJECTED
    return "completed", PAID


def payment(tag: str, i: int, simulate: str = "none", **more: Any) -> dict[str, Any]:
    return {
        "order_id": f"{tag}-{i}",
        "customer_id": f"customer-{i % 7}",
        "amount_cents": 1000 + i,
        "currency": "EUR",
        "simulate": simulate,
        **more,
    }


@dataclass
class StepView:
    name: str
    status: str
    attempts: int
    compensation_attempts: int
    last_error: str | None


@dataclass
class SagaView:
    saga_id: str
    name: str
    status: str
    current: int
    reason: str | None
    steps: list[StepView] = field(default_factory=list)
    effects: list[str] = field(default_factory=list)
    history: list[tuple[str, str | None]] = field(default_factory=list)

    def line(self) -> str:
        cur = self.steps[self.current].name if self.steps else "?"
        steps = ", ".join(
            f"{s.name}={s.status}/a{s.attempts}/u{s.compensation_attempts}"
            + (f" ({s.last_error})" if s.last_error else "")
            for s in self.steps
        )
        recent = "; ".join(f"{k}:{st}" for k, st in self.history[-4:])
        return (
            f"{self.saga_id} {self.name} {self.status} at {cur} reason={self.reason!r}\n"
            f"    steps: {steps}\n    effects: {self.effects}\n    recent history: {recent}"
        )


def views(engine: Engine, ids: Iterable[str]) -> dict[str, SagaView]:
    wanted = list(ids)
    out: dict[str, SagaView] = {}
    with engine.connect() as c:
        for r in c.execute(select(sagas).where(sagas.c.id.in_(wanted))):
            out[r.id] = SagaView(r.id, r.name, r.status, r.current, r.reason)
        for r in c.execute(
            select(saga_steps).where(saga_steps.c.saga_id.in_(wanted)).order_by(saga_steps.c.idx)
        ):
            out[r.saga_id].steps.append(
                StepView(r.name, r.status, r.attempts, r.compensation_attempts, r.last_error)
            )
        for r in c.execute(
            select(order_payment_events.c.saga_id, order_payment_events.c.action)
            .where(order_payment_events.c.saga_id.in_(wanted))
            .order_by(order_payment_events.c.id)
        ):
            out[r.saga_id].effects.append(r.action)
        for r in c.execute(
            select(saga_history.c.saga_id, saga_history.c.kind, saga_history.c.detail)
            .where(saga_history.c.saga_id.in_(wanted))
            .order_by(saga_history.c.id)
        ):
            detail = r.detail or {}
            out[r.saga_id].history.append((r.kind, detail.get("step")))
    return out


def terminal_count(engine: Engine, ids: Sequence[str]) -> int:
    return len(ids) - open_count(engine, ids)


def open_count(engine: Engine, ids: Sequence[str]) -> int:
    with engine.connect() as c:
        return int(
            c.execute(
                select(func.count())
                .select_from(sagas)
                .where(sagas.c.id.in_(list(ids)), sagas.c.status.not_in(TERMINAL))
            ).scalar_one()
        )


def unpublished(engine: Engine) -> int:
    with engine.connect() as c:
        return int(
            c.execute(
                select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            ).scalar_one()
        )


def stuck_report(engine: Engine, ids: Sequence[str], limit: int = 15) -> str:
    try:
        all_views = views(engine, ids)
        stuck = [v for v in all_views.values() if v.status not in TERMINAL]
        counts = Counter(v.status for v in all_views.values())
        lines = [
            f"{len(stuck)} of {len(ids)} sagas not terminal (statuses: {dict(counts)}); "
            f"unpublished outbox rows: {unpublished(engine)}"
        ]
        lines += [v.line() for v in stuck[:limit]]
        if len(stuck) > limit:
            lines.append(f"... and {len(stuck) - limit} more")
        return "\n".join(lines)
    except Exception as exc:  # the database itself may be the problem
        return f"(could not read the sagas: {type(exc).__name__}: {exc})"


def wait_terminal(
    engine: Engine,
    ids: Sequence[str],
    *,
    timeout: float,
    logs: Callable[[], str] | None = None,
    alive: Iterable[SagaProcess] = (),
) -> None:
    """Wait until every saga in `ids` is terminal; fail listing the stuck ones.

    Fails at once if a process in `alive` (the relay, the workers) dies.
    """

    def report() -> str:
        text = stuck_report(engine, ids)
        return text + ("\n" + logs() if logs else "")

    def done() -> bool:
        try:
            return open_count(engine, ids) == 0
        except Exception:  # database restarting: keep waiting until the deadline
            return False

    wait_for(
        done,
        timeout=timeout,
        what=f"{len(ids)} sagas to reach a terminal state",
        report=report,
        interval=0.25,
        alive=alive,
    )


def check_sagas(
    engine: Engine,
    expected: Mapping[str, tuple[str, Sequence[str]]],
    *,
    reason_contains: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, SagaView]:
    """Every saga has its expected status and exactly its expected business rows.

    Also, from the history: no step and no compensation succeeded twice, and
    compensations succeeded in the reverse order of the steps they undo.
    """
    got = views(engine, expected)
    problems: list[str] = []
    for saga_id, (status, effects) in expected.items():
        v = got.get(saga_id)
        if v is None:
            problems.append(f"{saga_id}: missing from the database (lost)")
            continue
        if v.status != status or v.effects != list(effects):
            problems.append(f"expected {status} with effects {list(effects)}, got:\n  {v.line()}")
        done = Counter(step for kind, step in v.history if kind == "step succeeded")
        undone = [step for kind, step in v.history if kind == "compensation succeeded"]
        twice = [s for s, n in done.items() if n > 1] + [
            s for s, n in Counter(undone).items() if n > 1
        ]
        if twice:
            problems.append(f"{saga_id}: recorded as succeeded more than once: {twice}")
        order = {s.name: i for i, s in enumerate(v.steps)}
        if undone != sorted(undone, key=lambda s: order.get(s or "", -1), reverse=True):
            problems.append(f"{saga_id}: compensations not in reverse order: {undone}")
        for needle in (reason_contains or {}).get(saga_id, ()):
            if needle not in (v.reason or ""):
                problems.append(f"{saga_id}: reason {v.reason!r} lacks {needle!r}")
    assert not problems, f"{len(problems)} of {len(expected)} sagas wrong:\n" + "\n".join(
        problems[:20]
    )
    return got


def doubled_rows(engine: Engine) -> list[tuple[str, str, int]]:
    """(saga, action, count) for any business action recorded more than once."""
    with engine.connect() as c:
        rows = c.execute(
            select(
                order_payment_events.c.saga_id,
                order_payment_events.c.action,
                func.count().label("n"),
            )
            .group_by(order_payment_events.c.saga_id, order_payment_events.c.action)
            .having(func.count() > 1)
        )
        return [(r.saga_id, r.action, int(r.n)) for r in rows]
