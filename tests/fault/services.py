"""Stopping and starting the real RabbitMQ and PostgreSQL servers (fault tests only).

These servers are shared with every other test on the machine, so whoever
stops one must start it again: `rabbitmq_outage()` and `postgres_outage()` are
context managers whose exit ALWAYS starts the server again and waits until it
answers (or fails loudly with the start command's output).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from kombu import Connection

from tests.support.postgres import ADMIN_URL
from tests.support.rabbitmq import AMQP_URL
from tests.support.waiting import wait_for


def _run(command: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        # Reported by the caller's check (does the server answer?), not raised here:
        # a start command that hangs must not skip the wait that follows it.
        return subprocess.CompletedProcess(command, -1, str(exc.stdout), f"timed out: {exc}")


def rabbitmq_answers(url: str = AMQP_URL) -> bool:
    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.channel()
            channel.close()
        return True
    except Exception:
        return False


def postgres_answers(url: str = ADMIN_URL) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


# -- RabbitMQ ------------------------------------------------------------------

RABBIT_STOP = "rabbitmqctl stop"
RABBIT_START = "rabbitmq-server -detached"


def stop_rabbitmq(timeout: float = 60.0) -> None:
    result = _run(RABBIT_STOP, timeout)
    wait_for(
        lambda: not rabbitmq_answers(),
        timeout,
        f"RabbitMQ to stop answering after `{RABBIT_STOP}` ({result})",
        interval=0.5,
    )


def start_rabbitmq(timeout: float = 120.0) -> None:
    """Start RabbitMQ if it does not answer; wait until it does."""
    if rabbitmq_answers():
        return
    result = _run(RABBIT_START, 60)
    # The node may take a while; `await_startup` waits for the boot to finish.
    _run("rabbitmqctl await_startup --timeout 90", 100)
    wait_for(
        rabbitmq_answers,
        timeout,
        f"RabbitMQ to answer after `{RABBIT_START}` "
        f"(rc={result.returncode} {result.stdout!r} {result.stderr!r})",
        interval=0.5,
    )


@contextmanager
def rabbitmq_outage() -> Iterator[None]:
    """Stop RabbitMQ at entry; at exit (whatever happened) start it and wait for it."""
    try:
        stop_rabbitmq()
        yield
    finally:
        start_rabbitmq()


# -- PostgreSQL ----------------------------------------------------------------


def _cluster() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    assert versions, "no PostgreSQL cluster under /etc/postgresql"
    return f"pg_ctlcluster --skip-systemctl-redirect {versions[-1]} main"


def stop_postgres(timeout: float = 60.0) -> None:
    # fast: disconnect every client at once, as a crash or failover would.
    result = _run(f"{_cluster()} stop -m fast", timeout)
    wait_for(
        lambda: not postgres_answers(),
        timeout,
        f"PostgreSQL to stop answering after stop ({result})",
        interval=0.5,
    )


def start_postgres(timeout: float = 120.0) -> None:
    """Start PostgreSQL if it does not answer; wait until it does."""
    if postgres_answers():
        return
    result = _run(f"{_cluster()} start", 60)
    wait_for(
        postgres_answers,
        timeout,
        "PostgreSQL to answer after start "
        f"(rc={result.returncode} {result.stdout!r} {result.stderr!r})",
        interval=0.5,
    )


@contextmanager
def postgres_outage() -> Iterator[None]:
    """Stop PostgreSQL at entry; at exit (whatever happened) start it and wait for it."""
    try:
        stop_postgres()
        yield
    finally:
        start_postgres()
