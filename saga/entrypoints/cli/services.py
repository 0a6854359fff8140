"""The long-running processes: `saga relay`, `worker`, `api`, `beat`, `watcher`; `saga up`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from saga.app.watcher import WatcherConfig, WatcherStats
from saga.entrypoints.cli import ledger as ledger_commands
from saga.entrypoints.cli._common import (
    BrokerOpt,
    DbOpt,
    console,
    env_settings,
    ledger_container,
    out,
    stop_event,
)
from saga.entrypoints.cli._common import (
    container as build_container,
)
from saga.entrypoints.metrics import relay_metrics, watcher_metrics

# The same options as `saga ledger ping`.
ProfileOpt = ledger_commands.ProfileOpt
MspDirOpt = ledger_commands.MspDirOpt
PeerOpt = ledger_commands.PeerOpt


def relay(db: DbOpt = None, broker: BrokerOpt = None) -> None:
    """Publish committed outbox rows to the broker, with confirms (runs until stopped)."""
    settings = env_settings(db, broker)
    container = build_container(settings)
    container.configure_logging()
    with relay_metrics(settings.metrics_port, settings.metrics_address):
        container.run_relay(stop_event())


def worker(
    db: DbOpt = None,
    broker: BrokerOpt = None,
    concurrency: Annotated[
        int | None, typer.Option("-c", "--concurrency", help="Worker processes.")
    ] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo, threads.")] = "prefork",
    hostname: Annotated[
        str | None,
        typer.Option(
            "-n",
            "--hostname",
            help="Celery node name (default: saga-<pid>@<host>, unique per process).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus endpoint port (overrides SAGA_METRICS_PORT; 0: none)."),
    ] = None,
) -> None:
    """Run a Celery worker that executes saga steps (scale by running more)."""
    settings = env_settings(db, broker, worker_concurrency=concurrency, metrics_port=metrics_port)
    container = build_container(settings)
    container.configure_logging()
    from saga.entrypoints.celery.main import run_composed_worker

    run_composed_worker(container, pool=pool, hostname=hostname or default_node_name())


def chain_executor(
    db: DbOpt = None,
    broker: BrokerOpt = None,
    in_flight: Annotated[
        int | None,
        typer.Option(help="Chain steps in progress at once (overrides SAGA_CHAIN_IN_FLIGHT)."),
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            "-n", "--hostname", help="Celery node name (default: saga-chain-<pid>@<host>)"
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus endpoint port (overrides SAGA_METRICS_PORT; 0: none)."),
    ] = None,
) -> None:
    """Run the chain steps of SAGA_CHAIN_QUEUE, many at once in one process (threads).

    Local steps stay with `saga worker`; the relay routes chain steps here when
    SAGA_CHAIN_QUEUE is set (on both).
    """
    settings = env_settings(db, broker, chain_in_flight=in_flight, metrics_port=metrics_port)
    container = ledger_container(settings)
    container.configure_logging()
    from saga.config import ConfigError
    from saga.entrypoints.celery.main import run_composed_chain_executor

    try:
        run_composed_chain_executor(
            container, hostname=hostname or default_node_name().replace("saga-", "saga-chain-", 1)
        )
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def default_node_name() -> str:
    """A node name no other worker process on this host has.

    Celery's default, celery@<host>, is the same for every worker on a host, and
    each node's remote-control queue (<node>.celery.pidbox) is exclusive to its
    connection: a second worker on the host, or one restarted while its killed
    predecessor's queue still exists, dies at start with RESOURCE_LOCKED (and
    exit code 0). The pid tells live processes on one host apart.
    """
    return f"saga-{os.getpid()}@%h"


def api(
    db: DbOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Serve the HTTP enqueue API (POST /sagas, GET /sagas/{id}, /docs) and the operator
    console (/ui: log in with SAGA_API_TOKEN or a SAGA_UI_USERS user)."""
    import uvicorn

    settings = env_settings(db, api_host=host, api_port=port)
    container = build_container(settings)
    container.configure_logging()
    from saga.entrypoints.http.app import create_app
    from saga.entrypoints.http.ui import ConsoleServices

    uvicorn.run(
        create_app(
            container.orchestrator(),
            settings,
            metrics=container.api_metrics(),
            console=ConsoleServices.from_container(container),
        ),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
    )


def up(
    scale: Annotated[
        list[str], typer.Option("--scale", help="NAME=COUNT, e.g. worker=3 (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    without: Annotated[
        list[str], typer.Option("--without", help="Leave this process out (repeatable).")
    ] = [],  # noqa: B006
    workdir: Annotated[
        str, typer.Option("--dir", help="Working directory: logs, devnet state, API token.")
    ] = ".saga-up",
    process_file: Annotated[
        str | None, typer.Option("--file", help="Process list (default compose/processes.toml).")
    ] = None,
) -> None:
    """Run the whole process set locally (the commands compose runs), until Ctrl-C.

    Without SAGA_FABRIC_PROFILE it starts a devnet and the sagafacts chaincode too.
    """

    from saga.entrypoints.processes import (
        PROCESS_FILE,
        ProcessFileError,
        ProcessSetError,
        parse_scale,
        run_up,
    )

    try:
        run_up(
            workdir=Path(workdir),
            scale=parse_scale(scale),
            without=without,
            process_file=Path(process_file) if process_file else PROCESS_FILE,
            # Unwrapped and literal: the export line is pasted into a shell as it is.
            say=lambda text: console.print(text, soft_wrap=True, markup=False, highlight=False),
            stop=stop_event(),
        )
    except (ValueError, ProcessFileError, ProcessSetError) as exc:
        console.print(f"[red]saga up:[/] {exc}")
        raise typer.Exit(2) from None


def beat(db: DbOpt = None, broker: BrokerOpt = None) -> None:
    """Run Celery beat: publishes the stuck-saga sweep every SAGA_SWEEP_INTERVAL seconds.

    Workers run the sweep; run one beat per deployment.
    """
    from saga.entrypoints.celery.main import run_beat

    settings = env_settings(db, broker)
    build_container(settings).configure_logging()
    run_beat(settings)


def watcher(
    db: DbOpt = None,
    profile: ProfileOpt = None,
    msp_dir: MspDirOpt = None,
    peer: PeerOpt = None,
    max_in_flight: Annotated[
        int,
        typer.Option(
            help="Concurrent CommitStatus calls; with SAGA_CHAIN_IN_FLIGHT, keep under the "
            "peer's gateway limit (500 by default)."
        ),
    ] = 250,
    wait_timeout: Annotated[
        float, typer.Option(help="Seconds one commit wait may take before the step is re-driven.")
    ] = 30.0,
    poll_interval: Annotated[float, typer.Option(help="Seconds between store polls.")] = 0.5,
    redrive_interval: Annotated[
        float, typer.Option(help="At most one deadline re-drive per transaction this often.")
    ] = 60.0,
    status_interval: Annotated[
        float, typer.Option(help="Seconds between status log lines with the counters.")
    ] = 30.0,
) -> None:
    """Follow submitted chain transactions: a VALID commit completes its step, any other
    code sends the step a message to decide what next.

    Runs until SIGTERM or Ctrl-C, then prints its counters as JSON.
    """
    settings = env_settings(db, fabric_profile=profile, fabric_msp_dir=msp_dir, fabric_peer=peer)
    container = ledger_container(settings)
    try:
        config = WatcherConfig(
            max_in_flight=max_in_flight,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
            redrive_interval=redrive_interval,
            status_interval=status_interval,
            db_threads=max(1, min(4, settings.db_pool_size)),
        )
    except ValueError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    container.configure_logging()
    stats = WatcherStats()
    with watcher_metrics(settings.metrics_port, stats, settings.metrics_address):
        container.run_watcher(stop_event(), config, stats)
    out.print_json(data=stats.as_dict())
