"""Celery beat: the periodic stuck-saga sweep.

`saga beat` runs Celery beat with one schedule entry, `saga.sweep` every
SAGA_SWEEP_INTERVAL seconds. Beat only publishes the task message; a worker
(any one: the message goes to the step queue like every step message) runs the
sweep (saga.app.sweeper). Run exactly one beat per deployment: two would only sweep
twice as often (each saga's decision is taken under its row lock), not wrongly.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saga.bootstrap import Container
from saga.config import Settings

if TYPE_CHECKING:
    from saga.app.sweeper import Sweeper
    from saga.entrypoints.celery.app import SagaCelery

log = logging.getLogger("saga.beat")

SWEEP_TASK = "saga.sweep"
SCHEDULE_ENTRY = "saga-sweep"


def beat_schedule(settings: Settings) -> dict[str, Any]:
    return {
        SCHEDULE_ENTRY: {
            "task": SWEEP_TASK,
            "schedule": settings.sweep_interval,
            # No `expires`: Celery sends it as the AMQP per-message TTL too, and the
            # step queue dead-letters expired messages, so every sweep that waited
            # out a backlog or a worker outage would land in the DLQ for an
            # operator. A backlog of sweeps is only waste: each pass is safe to
            # repeat (decisions are taken under the saga's row lock).
        }
    }


def register_sweep_task(app: SagaCelery) -> None:
    """Add the sweep task to a worker's app; the sweeper is built once per process."""
    holder: dict[str, Sweeper] = {}
    lock = threading.Lock()

    def sweeper() -> Sweeper:
        with lock:
            if "sweeper" not in holder:
                holder["sweeper"] = Container(app.saga_settings).sweeper()
            return holder["sweeper"]

    @app.task(name=SWEEP_TASK, ignore_result=True, acks_late=True)
    def sweep() -> dict[str, Any]:
        report = sweeper().sweep()
        summary = {k: (len(v) if isinstance(v, list) else v) for k, v in report.as_dict().items()}
        log.info("sweep task done", extra=summary)
        return summary


def schedule_file(settings: Settings) -> str:
    if settings.beat_schedule_file:
        return settings.beat_schedule_file
    return str(Path(tempfile.gettempdir()) / f"saga-beat-{settings.step_queue}.schedule")
