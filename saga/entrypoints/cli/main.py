"""The `saga` command line. Every command has --help; settings come from SAGA_*
environment variables, and the few options here override them for one run.

This module only mounts the commands, in the order `saga --help` lists them; each
group lives in its own module of saga.entrypoints.cli."""

from __future__ import annotations

import sys

import typer

from saga.entrypoints.cli import configuration, db, demo, enqueue, maintenance, services
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
app.command()(configuration.config)
app.add_typer(db.db_app, name="db")
app.command()(services.relay)
app.command()(services.worker)
app.command()(services.api)
app.command()(enqueue.enqueue)
app.command("list")(inspect_commands.list_sagas)
app.command()(inspect_commands.show)
app.command()(wait_commands.wait)
app.command()(operator_commands.retry)
app.command()(operator_commands.resume)
app.command()(operator_commands.compensate)
app.add_typer(dlq_commands.app, name="dlq")
app.command()(queues_commands.queues)
app.add_typer(ledger_commands.app, name="ledger")
app.command()(demo.demo)
app.command()(services.up)
app.command()(services.beat)
app.command()(maintenance.sweep)


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


app.command()(services.watcher)
app.command("chain-executor")(services.chain_executor)
app.command()(maintenance.audit)
