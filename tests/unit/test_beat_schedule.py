"""The beat schedule built from the product's config holds only tasks a saga worker runs.

A task the worker does not accept is dead-lettered as "unknown task", and the
README's alert `saga_dead_letter_messages > 0` would fire for something the
product scheduled itself (Celery's `celery.backend_cleanup` did, daily at 04:00).
"""

from __future__ import annotations

from pathlib import Path

from celery.beat import PersistentScheduler

from saga.config import Settings
from saga.entrypoints.celery.beat import SWEEP_TASK
from saga.entrypoints.celery.consumer import SAGA_TASKS
from saga.entrypoints.celery.main import beat_app


def test_beat_schedule_holds_only_tasks_the_worker_accepts(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'saga.sqlite3'}",
        broker_url="memory://",
        beat_schedule_file=str(tmp_path / "beat.schedule"),
    )
    app = beat_app(settings)
    # The scheduler `celery beat` builds: it adds Celery's default entries to ours.
    scheduler = PersistentScheduler(
        app=app, schedule_filename=settings.beat_schedule_file, lazy=False
    )
    try:
        tasks = {entry.name: entry.task for entry in scheduler.schedule.values()}
    finally:
        scheduler.close()
    assert SWEEP_TASK in tasks.values(), tasks
    foreign = {name: task for name, task in tasks.items() if task not in SAGA_TASKS}
    assert not foreign, f"beat would send tasks a saga worker dead-letters: {foreign}"
