"""A real Celery worker process (`celery -A saga.entrypoints.celery.main worker`) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from sqlalchemy.engine import Engine

from saga.adapters.rabbitmq import AmqpPublisher, Topology
from saga.adapters.sql import TRANSIENT_ERRORS, SqlOutboxReader, SqlUnitOfWorkFactory
from saga.app.orchestrator import Orchestrator
from saga.app.relay import Backoff, run_relay
from saga.config import Settings
from saga.ports.store import UnitOfWorkFactory
from saga.registry_loader import load_registry

ROOT = Path(__file__).resolve().parents[2]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SAGA_DATABASE_URL": settings.database_url,
        "SAGA_BROKER_URL": settings.broker_url,
        "SAGA_STEP_QUEUE": settings.step_queue,
        "SAGA_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "SAGA_DEFINITIONS": settings.definitions,
        "SAGA_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        **extra,
    }


@contextmanager
def celery_worker(
    settings: Settings, log_path: Path, *, concurrency: int = 2, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `celery -A saga.entrypoints.celery.main worker`; stop it (SIGTERM, SIGKILL) after."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "saga.entrypoints.celery.main",
            "worker",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            f"--hostname=test-{os.getpid()}-{time.monotonic_ns()}@%h",
        ],
        cwd=ROOT,
        env=worker_env(settings, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()


def orchestrator(engine: Engine, settings: Settings) -> Orchestrator:
    uow = cast(UnitOfWorkFactory, SqlUnitOfWorkFactory(engine))
    return Orchestrator(load_registry(settings.definitions), uow, transient_errors=TRANSIENT_ERRORS)


@contextmanager
def relay_thread(settings: Settings, engine: Engine) -> Iterator[None]:
    stop = threading.Event()
    publisher = AmqpPublisher(settings.broker_url, Topology.from_settings(settings))
    thread = threading.Thread(
        target=run_relay,
        args=(settings, SqlOutboxReader(engine), publisher, stop),
        kwargs={"backoff": Backoff(initial=0.1, maximum=1.0)},
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


__all__ = ["celery_worker", "orchestrator", "relay_thread", "worker_env"]
