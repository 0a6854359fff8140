"""Waiting for a chaos run to settle: every saga terminal, the outbox and the step queue empty."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from saga.adapters.sql.tables import ledger_attempts, outbox, sagas
from saga.config import Settings
from tests.chaos.plan import TERMINAL, ChaosConfig
from tests.support.rabbitmq import queue_depth


@dataclass
class Quiet:
    reached: bool
    seconds: float
    open_sagas: int
    unpublished: int
    queue_depth: int
    unsettled_attempts: int


def quiet_now(engine: Engine, settings: Settings) -> Quiet:
    with engine.connect() as c:
        open_sagas = c.execute(
            select(func.count()).select_from(sagas).where(sagas.c.status.not_in(TERMINAL))
        ).scalar_one()
        pending = c.execute(
            select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        ).scalar_one()
        unsettled = c.execute(
            select(func.count())
            .select_from(ledger_attempts)
            .where(ledger_attempts.c.state != "committed")
        ).scalar_one()
    depth = queue_depth(settings.broker_url, settings.step_queue)
    done = open_sagas == 0 and pending == 0 and depth == 0 and unsettled == 0
    return Quiet(done, 0.0, int(open_sagas), int(pending), int(depth), int(unsettled))


def wait_quiet(engine: Engine, settings: Settings, config: ChaosConfig) -> Quiet:
    started = time.monotonic()
    deadline = started + config.quiescence_timeout
    last: Quiet | None = None
    said = 0.0
    while True:
        try:
            last = quiet_now(engine, settings)
        except Exception as exc:
            config.say(f"[quiet] not readable yet: {type(exc).__name__}")
        if last is not None and last.reached:
            break
        now = time.monotonic()
        if now > deadline:
            break
        if last is not None and now - said > 15:
            said = now
            config.say(
                f"[quiet] {now - started:5.0f}s: {last.open_sagas} sagas open, "
                f"{last.unpublished} outbox rows unpublished, {last.queue_depth} queued, "
                f"{last.unsettled_attempts} ledger attempts unsettled"
            )
        time.sleep(1.0)
    assert last is not None
    return replace(last, seconds=round(time.monotonic() - started, 1))
