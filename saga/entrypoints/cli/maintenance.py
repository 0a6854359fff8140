"""`saga sweep` and `saga audit`: re-drive stuck sagas; compare the database with the ledger."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from saga.entrypoints.cli import ledger as ledger_commands
from saga.entrypoints.cli._common import (
    BrokerOpt,
    DbOpt,
    JsonOpt,
    console,
    env_settings,
    ledger_container,
    out,
)
from saga.entrypoints.cli._common import (
    container as build_container,
)

# The same options as `saga ledger ping`.
ProfileOpt = ledger_commands.ProfileOpt
MspDirOpt = ledger_commands.MspDirOpt
PeerOpt = ledger_commands.PeerOpt


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
    settings = env_settings(db, broker)
    container = build_container(settings)
    report = container.sweeper().sweep(saga_id=saga_id)
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
    from saga.app.audit import audit as run_audit
    from saga.entrypoints.cli._common import parse_cutoff

    when = parse_cutoff(since, "--since") if since else None
    settings = env_settings(
        db,
        fabric_profile=profile,
        fabric_msp_dir=msp_dir,
        fabric_peer=peer,
        fabric_channel=channel,
    )
    container = ledger_container(settings)
    try:
        with Progress(
            TextColumn("scanning blocks"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
            disable=as_json,
        ) as bar:
            task = bar.add_task("blocks", total=None)
            scan = container.scan_ledger(
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
