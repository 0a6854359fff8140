"""`saga devnet ...` (mounted by the lead) and `python -m saga_devnet ...`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from saga_devnet.config import load_or_init
from saga_devnet.faults import Faults

app = typer.Typer(help="A local Fabric-compatible network for development and tests.")


@app.command()
def up(
    dir: Path = typer.Option(Path(".devnet"), "--dir", help="State directory (created if absent)."),
    config: Path | None = typer.Option(
        None, "--config", help="Seed devnet.yaml, used only when DIR has none yet."
    ),
    fault: list[str] = typer.Option(
        [], "--fault", help="Fault knob name=value (see saga_devnet/faults.py); repeatable."
    ),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Run the devnet in the foreground; Ctrl-C or SIGTERM stops it, state stays in DIR."""
    from saga_devnet.server import serve

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    directory = dir.resolve()
    cfg = load_or_init(directory, config)
    faults = Faults()
    try:
        faults.parse_cli(fault)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fault") from exc
    asyncio.run(serve(directory, cfg, faults))


@app.command()
def init(
    dir: Path = typer.Option(Path(".devnet"), "--dir"),
    config: Path | None = typer.Option(None, "--config"),
) -> None:
    """Write config, crypto material and connection profiles without starting anything."""
    from saga_devnet.server import prepare

    directory = dir.resolve()
    cfg = load_or_init(directory, config)
    prepare(directory, cfg)
    typer.echo(f"devnet material in {directory}")


def main() -> None:
    app()
