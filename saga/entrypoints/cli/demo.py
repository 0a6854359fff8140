"""`saga demo`: the order-payment example end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from saga.config import ConfigError
from saga.entrypoints.cli._common import (
    BrokerOpt,
    DbOpt,
    console,
    env_settings,
    out,
)


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
    settings = env_settings(
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
