"""The `saga` command line. Every command has --help; settings come from SAGA_*
environment variables, and the few options here override them for one run."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from saga.config import ConfigError, Settings
from saga.entrypoints.cli import dlq as dlq_commands
from saga.entrypoints.cli import inspect as inspect_commands
from saga.entrypoints.cli import ledger as ledger_commands
from saga.entrypoints.cli import operator as operator_commands
from saga.entrypoints.cli import queues as queues_commands
from saga.entrypoints.cli import wait as wait_commands

app = typer.Typer(
    help="Saga orchestrator: enqueue sagas, run the relay and workers, inspect and repair.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console(stderr=True)
out = Console()

DbOpt = Annotated[
    str | None, typer.Option("--db", help="Database URL (overrides SAGA_DATABASE_URL).")
]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="Broker URL (overrides SAGA_BROKER_URL).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _settings(db: str | None = None, broker: str | None = None, **more: Any) -> Settings:
    try:
        return Settings.from_env(database_url=db, broker_url=broker, **more)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def _container(settings: Settings) -> Any:
    from saga.bootstrap import Container

    return Container(settings)


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@app.command()
def config() -> None:
    """Print the settings in effect (secrets masked) and where each comes from.

    Each line is VAR=VALUE  (environment | file PATH, VAR_FILE | default).
    """
    settings = _settings()
    for key, value in settings.redacted().items():
        if key in os.environ:
            source = "environment"
        elif f"{key}_FILE" in os.environ:
            source = f"file {os.environ[key + '_FILE']}, {key}_FILE"
        else:
            source = "default"
        out.print(f"{key}={value}  ({source})", highlight=False, soft_wrap=True, markup=False)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, revision: str = "head") -> None:
    """Create or migrate the schema to REVISION (default: the latest)."""
    from saga.adapters.sql.migrate import upgrade

    settings = _settings(db)
    upgrade(settings.sqlalchemy_url, revision)
    console.print(f"schema at {revision} on {settings.redacted()['SAGA_DATABASE_URL']}")


@app.command()
def relay(db: DbOpt = None, broker: BrokerOpt = None) -> None:
    """Publish committed outbox rows to the broker, with confirms (runs until stopped)."""
    settings = _settings(db, broker)
    container = _container(settings)
    container.configure_logging()
    container.run_relay(_stop_event())


@app.command()
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
    settings = _settings(db, broker, worker_concurrency=concurrency, metrics_port=metrics_port)
    container = _container(settings)
    container.configure_logging()
    container.run_worker(pool=pool, hostname=hostname or default_node_name())


def default_node_name() -> str:
    """A node name no other worker process on this host has.

    Celery's default, celery@<host>, is the same for every worker on a host, and
    each node's remote-control queue (<node>.celery.pidbox) is exclusive to its
    connection: a second worker on the host, or one restarted while its killed
    predecessor's queue still exists, dies at start with RESOURCE_LOCKED (and
    exit code 0). The pid tells live processes on one host apart.
    """
    return f"saga-{os.getpid()}@%h"


@app.command()
def api(
    db: DbOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Serve the HTTP enqueue API (POST /sagas, GET /sagas/{id}, /docs)."""
    import uvicorn

    settings = _settings(db, api_host=host, api_port=port)
    container = _container(settings)
    container.configure_logging()
    uvicorn.run(
        container.http_app(), host=settings.api_host, port=settings.api_port, log_config=None
    )


@app.command()
def enqueue(
    saga: Annotated[str, typer.Argument(help="Saga name, e.g. order-payment.")],
    payload: Annotated[str, typer.Argument(help="The saga's input as JSON.")],
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key.")] = None,
    db: DbOpt = None,
) -> None:
    """Start a saga directly against the store (services use the API or the client)."""
    from saga.core.errors import SagaError

    container = _container(_settings(db))
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        console.print(f"[red]payload is not JSON:[/] {exc}")
        raise typer.Exit(2) from None
    try:
        result = container.orchestrator().enqueue(saga, data, idempotency_key=key)
    except SagaError as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    out.print(result.saga_id)


# Operator commands live in saga.entrypoints.cli, one module per group.
app.command("list")(inspect_commands.list_sagas)
app.command()(inspect_commands.show)
app.command()(wait_commands.wait)
app.command()(operator_commands.retry)
app.command()(operator_commands.resume)
app.command()(operator_commands.compensate)
app.add_typer(dlq_commands.app, name="dlq")
app.command()(queues_commands.queues)
app.add_typer(ledger_commands.app, name="ledger")


@app.command()
def demo(
    sagas: Annotated[int, typer.Option("--sagas", "-n", help="How many sagas to run.")] = 200,
    db: DbOpt = None,
    broker: BrokerOpt = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 600.0,
    ledger: Annotated[
        bool,
        typer.Option(
            "--ledger",
            help="Record each payment on a ledger too (the v2 saga): the network of "
            "--fabric-dir, --profile/--msp-dir or SAGA_FABRIC_*, else a devnet and chaincode "
            "this command starts in .saga-demo/.",
        ),
    ] = False,
    fabric_dir: Annotated[
        Path | None,
        typer.Option(
            "--fabric-dir",
            help="A real Fabric network running from `python -m saga_fabricnet up --dir DIR`: "
            "its org1 profile, User1's MSP folder, channel and (with --client-auth) TLS "
            "client pair. Implies --ledger.",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            help="Connection profile of a running network (overrides SAGA_FABRIC_PROFILE). "
            "Implies --ledger; needs --msp-dir or SAGA_FABRIC_MSP_DIR.",
            show_default=False,
        ),
    ] = None,
    msp_dir: Annotated[
        str | None,
        typer.Option(
            "--msp-dir",
            help="The client identity's MSP folder, signcerts/ and keystore/ (overrides "
            "SAGA_FABRIC_MSP_DIR).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the order-payment example end to end: relay and workers in this command.

    With no options it needs no servers (SQLite store and broker files in the
    current directory); with --db postgresql://... --broker amqp://... it runs on
    the real services. With --ledger (or a network given by --fabric-dir or
    --profile) each payment is also recorded on Fabric; a given network must be
    running and is asked once before the demo starts (exit 2 if it does not answer).
    """
    from saga.entrypoints.demo import run_demo
    from saga.entrypoints.demo_ledger import DemoLedgerError

    if fabric_dir is not None and (profile or msp_dir):
        console.print(
            "[red]--fabric-dir names the whole network:[/] give it, or --profile and --msp-dir, "
            "not both",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    ledger = ledger or fabric_dir is not None or profile is not None
    settings = _settings(
        db, broker, worker_concurrency=workers, fabric_profile=profile, fabric_msp_dir=msp_dir
    )
    try:
        summary = run_demo(
            settings,
            sagas=sagas,
            timeout=timeout,
            console=console,
            ledger=ledger,
            fabric_dir=fabric_dir,
        )
    except (DemoLedgerError, ConfigError) as exc:
        console.print(f"[red]the demo's ledger cannot be used:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    table = Table("sagas", "completed", "compensated", "failed", "unfinished", "seconds", "sagas/s")
    table.add_row(
        str(summary.total),
        str(summary.completed),
        str(summary.compensated),
        str(summary.failed),
        str(summary.unfinished),
        f"{summary.seconds:.1f}",
        f"{summary.rate:.1f}",
    )
    out.print(table)
    if summary.audit is not None:
        report = summary.audit
        out.print(
            f"ledger: {report.ledger_transactions} transactions in {report.blocks} blocks; "
            f"audit {'clean' if report.clean else report.counts()}"
        )
    if not summary.ok:
        console.print(f"[red]demo did not finish as expected:[/] {summary.problem}")
        raise typer.Exit(1)


@app.command()
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
    from pathlib import Path

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
            stop=_stop_event(),
        )
    except (ValueError, ProcessFileError, ProcessSetError) as exc:
        console.print(f"[red]saga up:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def beat(db: DbOpt = None, broker: BrokerOpt = None) -> None:
    """Run Celery beat: publishes the stuck-saga sweep every SAGA_SWEEP_INTERVAL seconds.

    Workers run the sweep; run one beat per deployment.
    """
    from saga.entrypoints.celery.beat import run_beat

    settings = _settings(db, broker)
    _container(settings).configure_logging()
    run_beat(settings)


@app.command()
def sweep(
    db: DbOpt = None,
    broker: BrokerOpt = None,
    saga_id: Annotated[
        str | None,
        typer.Option("--saga", help="Only this saga (re-driven if it is due, whatever the rest)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sweep once now: re-drive stuck sagas through the verify path, mark hopeless ones.

    The same pass beat schedules; safe beside it. Prints what it did.
    """
    from saga.app.sweeper import build_sweeper

    settings = _settings(db, broker)
    container = _container(settings)
    report = build_sweeper(container).sweep(saga_id=saga_id)
    data = report.as_dict()
    if as_json:
        out.print_json(data=data)
        return
    table = Table("sweep", "count", "sagas / txids")
    for key, value in data.items():
        if isinstance(value, list):
            table.add_row(key.replace("_", " "), str(len(value)), " ".join(value[:10]))
        elif value is not None:
            table.add_row(key.replace("_", " "), str(value), "")
    out.print(table)


def _mount_devnet() -> None:
    try:
        from saga_devnet.cli import app as devnet_app
    except ImportError:  # the devnet package is optional in a slim install
        return
    app.add_typer(devnet_app, name="devnet", help="Local Fabric-compatible network.")


_mount_devnet()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


# -- ledger: commit watcher and audit -------------------------------------------------------

# The same options as `saga ledger ping`.
ProfileOpt = ledger_commands.ProfileOpt
MspDirOpt = ledger_commands.MspDirOpt
PeerOpt = ledger_commands.PeerOpt


def _ledger_container(settings: Settings) -> Any:
    """A container whose Fabric settings are complete and whose files load."""
    if not settings.ledger_configured:
        console.print(
            "[red]configuration error:[/] no ledger: set SAGA_FABRIC_PROFILE and "
            "SAGA_FABRIC_MSP_DIR (or give --profile and --msp-dir)"
        )
        raise typer.Exit(2)
    container = _container(settings)
    try:
        container.fabric_access()
    except (OSError, ValueError) as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    return container


@app.command()
def watcher(
    db: DbOpt = None,
    profile: ProfileOpt = None,
    msp_dir: MspDirOpt = None,
    peer: PeerOpt = None,
    max_in_flight: Annotated[
        int, typer.Option(help="Concurrent CommitStatus calls (peer default limit: 500).")
    ] = 400,
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
    """Follow submitted chain transactions and turn each commit into a step message.

    Runs until SIGTERM or Ctrl-C, then prints its counters as JSON.
    """
    from saga.app.watcher import WatcherConfig, run_watcher

    settings = _settings(db, fabric_profile=profile, fabric_msp_dir=msp_dir, fabric_peer=peer)
    container = _ledger_container(settings)
    try:
        config = WatcherConfig(
            max_in_flight=max_in_flight,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
            redrive_interval=redrive_interval,
            status_interval=status_interval,
            db_threads=max(1, min(4, settings.db_pool_size)),
            metrics_port=settings.metrics_port,
            metrics_address=settings.metrics_address,
        )
    except ValueError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    container.configure_logging()
    stats = run_watcher(
        container.uow_factory,
        container.commit_client_factory(max_in_flight),
        _stop_event(),
        config,
    )
    out.print_json(data=stats.as_dict())


@app.command()
def audit(
    saga_id: Annotated[str | None, typer.Option("--saga", help="Only this saga.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only sagas created (and ledger records written) since: ISO or 6h."),
    ] = None,
    db: DbOpt = None,
    profile: ProfileOpt = None,
    msp_dir: MspDirOpt = None,
    peer: PeerOpt = None,
    channel: Annotated[
        str | None, typer.Option(help="Channel to scan (overrides SAGA_FABRIC_CHANNEL).")
    ] = None,
    chaincode: Annotated[
        str, typer.Option(help="Chaincode whose records are audited.")
    ] = "sagafacts",
    as_json: JsonOpt = False,
) -> None:
    """Compare the database with the ledger; exit 1 if any count is not zero.

    Counts chain steps done without a VALID transaction, VALID transactions for
    steps not done, VALID transactions for keys the database does not know, keys
    with more than one VALID transaction, sagas not terminal, and pending
    transactions (prepared or submitted, not on the ledger, the step not done).
    Exit 2 if the ledger cannot be read (nothing is compared then).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from saga.adapters.fabric import GatewayError
    from saga.adapters.fabric.ledger_scan import scan_ledger
    from saga.app.audit import audit as run_audit
    from saga.entrypoints.cli._common import parse_cutoff

    when = parse_cutoff(since, "--since") if since else None
    settings = _settings(
        db,
        fabric_profile=profile,
        fabric_msp_dir=msp_dir,
        fabric_peer=peer,
        fabric_channel=channel,
    )
    container = _ledger_container(settings)
    try:
        with (
            container.query_client() as client,
            Progress(
                TextColumn("scanning blocks"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
                disable=as_json,
            ) as bar,
        ):
            task = bar.add_task("blocks", total=None)
            scan = scan_ledger(
                client,
                settings.fabric_channel,
                chaincode,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except GatewayError as exc:
        console.print(f"[red]reading the ledger failed:[/] {exc}")
        raise typer.Exit(2) from None
    report = run_audit(container.uow_factory, container.registry, scan, saga_id=saga_id, since=when)
    if as_json:
        out.print_json(data=report.as_dict())
    else:
        summary = Table("checked", "count", title="saga audit")
        summary.add_row("sagas", str(report.sagas))
        summary.add_row("chain steps", str(report.chain_steps))
        summary.add_row("blocks", str(report.blocks))
        summary.add_row("ledger transactions", str(report.ledger_transactions))
        out.print(summary)
        counts = Table("discrepancy", "count")
        for kind, count in report.counts().items():
            shown = "not checked" if count is None else str(count)
            style = "red" if count else "green"
            counts.add_row(kind.replace("_", " "), f"[{style}]{shown}[/]")
        out.print(counts)
        items = [d for found in report.found.values() if found for d in found]
        if items:
            detail = Table("kind", "saga", "step", "key", "txids", "detail")
            for d in items[:50]:
                detail.add_row(
                    d.kind,
                    d.saga_id or "",
                    f"{d.step}/{d.purpose}" if d.step else "",
                    d.key or "",
                    " ".join(t[:12] for t in d.txids),
                    d.detail,
                )
            out.print(detail)
            if len(items) > 50:
                out.print(f"... and {len(items) - 50} more (use --json for all)")
    if not report.clean:
        raise typer.Exit(1)
