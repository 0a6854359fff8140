"""`saga enqueue`: start a saga from the command line."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from saga.entrypoints.cli._common import (
    DbOpt,
    console,
    env_settings,
    out,
)
from saga.entrypoints.cli._common import (
    container as build_container,
)


def enqueue(
    saga: Annotated[str, typer.Argument(help="Saga name, e.g. order-payment.")],
    payload: Annotated[str, typer.Argument(help="The saga's input as JSON.")],
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key.")] = None,
    db: DbOpt = None,
) -> None:
    """Start a saga directly against the store (services use the API or the client)."""
    from saga.core.errors import OrchestrationError

    container = build_container(env_settings(db))
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        console.print(f"[red]payload is not JSON:[/] {exc}")
        raise typer.Exit(2) from None
    try:
        result = container.orchestrator().enqueue(saga, data, idempotency_key=key)
    except OrchestrationError as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    out.print(result.saga_id)
