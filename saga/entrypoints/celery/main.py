"""The Celery entry points, wired by the composition root: `celery -A
saga.entrypoints.celery.main worker` (and Flower, `inspect ...`), `saga worker`
(run_composed_worker), `saga chain-executor` (run_composed_chain_executor) and
`saga beat` (run_beat).

Importing this module creates nothing: Celery looks up
`saga.entrypoints.celery.main.app`, and the module-level `__getattr__` builds the
app then, from SAGA_ environment variables, once. Each worker process builds its
own orchestrator after the fork, through the factory given to the app.
"""

from __future__ import annotations

import threading
from typing import Any

from saga.bootstrap import Container
from saga.config import ConfigError, Settings
from saga.entrypoints.celery.app import (
    Consumes,
    SagaCelery,
    create_celery_app,
    run_worker,
)
from saga.entrypoints.celery.beat import beat_schedule, schedule_file

_lock = threading.Lock()
_app: SagaCelery | None = None


def composed_app(container: Container) -> SagaCelery:
    """The worker's app; every worker process builds its own orchestrator after the fork."""
    settings = container.settings
    return create_celery_app(
        settings,
        lambda: Container(settings).orchestrator(),
        transient_errors=container.transient_errors,
    )


def run_composed_worker(
    container: Container, pool: str | None = None, hostname: str | None = None
) -> None:
    """Run a worker in this process until it is told to stop (blocks)."""
    settings = container.settings
    run_worker(
        settings,
        lambda: Container(settings).orchestrator(),
        transient_errors=container.transient_errors,
        pool=pool,
        hostname=hostname,
    )


def run_composed_chain_executor(container: Container, hostname: str | None = None) -> None:
    """Run the chain executor in this process until it is told to stop (blocks).

    A Celery worker on SAGA_CHAIN_QUEUE with the threads pool: SAGA_CHAIN_IN_FLIGHT
    chain steps in progress in one process, each on a thread that mostly waits on
    Endorse and Submit (the GIL is released there). The steps run the same task, the
    same chain step protocol (saga.app.chain.executor) and the same message handling
    (screening, late ack, database retries, dead-lettering) as `saga worker`.
    """
    settings = container.settings
    if not settings.chain_queue:
        raise ConfigError(
            "SAGA_CHAIN_QUEUE is not set, so the relay routes chain steps to the step queue "
            "and workers run them: set it (e.g. saga.chain-steps) on the relay and here to "
            "give chain steps to the chain executor"
        )
    run_worker(
        settings,
        lambda: container.orchestrator(),
        transient_errors=container.transient_errors,
        pool="threads",
        hostname=hostname,
        consumes=Consumes.chain_steps(settings),
    )


def build_app(settings: Settings | None = None) -> SagaCelery:
    return composed_app(Container(settings or Settings.from_env()))


def beat_app(settings: Settings) -> SagaCelery:
    """The app `saga beat` runs: the worker's app with the sweep schedule."""
    app = composed_app(Container(settings))
    app.conf.beat_schedule = beat_schedule(settings)
    return app


def run_beat(settings: Settings) -> None:
    """Run Celery beat with the sweep schedule in this process until stopped (blocks)."""
    app = beat_app(settings)
    app.start(
        [
            "beat",
            f"--schedule={schedule_file(settings)}",
            f"--loglevel={settings.log_level}",
        ]
    )


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if _app is None:
            _app = build_app()
    return _app
