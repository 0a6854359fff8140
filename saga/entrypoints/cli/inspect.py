"""`saga list` and `saga show`: what the sagas are doing, for people and scripts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from saga.core.state import SagaStatus
from saga.entrypoints.cli._common import (
    REFUSED,
    USAGE,
    DbOpt,
    JsonOpt,
    age,
    console,
    container,
    fail,
    out,
    parse_cutoff,
    print_json,
    settings,
    summary_json,
    table,
)
from saga.entrypoints.saga_view import saga_view
from saga.ports.store import SagaRecord


def list_sagas(
    status: Annotated[
        SagaStatus | None, typer.Option(help="Only sagas in this state.", case_sensitive=False)
    ] = None,
    name: Annotated[str | None, typer.Option(help="Only sagas of this name.")] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="Only the saga with this idempotency key (the caller's)."),
    ] = None,
    input_fields: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="Only sagas whose input has FIELD=VALUE, e.g. customer_id=c-17 "
            "(dots for nested fields; 1250 matches the number and the string). Repeatable.",
            show_default=False,
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Only sagas whose last progress is older than this: an age (90s, 10m, 2h, "
            "3d) or an ISO time. Lists oldest first, the ones stuck longest at the top.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (a page).")] = 50,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Start after this cursor: the one the previous page printed after `next:`.",
            show_default=False,
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List sagas, newest progress first (oldest first with --older-than), a page at a time.

    Under the list (on stderr, so --json stays a plain list): how many sagas
    match in all, per status, and the command for the next page.
    """
    from saga.adapters.sql.saga_search import BadFilter, Cursor, InputField, SagaFilter, search

    cutoff = parse_cutoff(older_than, "--older-than") if older_than else None
    try:
        where = SagaFilter(
            statuses=(str(status),) if status else (),
            name=name,
            idempotency_key=key,
            older_than=cutoff,
            inputs=tuple(InputField.parse(f) for f in input_fields or ()),
        )
        cursor = Cursor.parse(after) if after else None
    except BadFilter as exc:
        fail(USAGE, str(exc), "see `saga list --help`")
    c = container(settings(db))
    with c.engine.connect() as connection:
        page = search(connection, where, limit=limit, after=cursor)
    now = datetime.now(UTC)
    rows = [summary_json(s, now) for s in page.summaries]
    if as_json:
        print_json(rows)
    else:
        _print_rows(page.summaries, now)
    _print_totals(len(rows), page, after is not None)


def _print_rows(summaries: list[Any], now: datetime) -> None:
    rows_table = table("id", "saga", "status", "step", "attempt", "idle", "reason", ids=("id",))
    for s in summaries:
        row = summary_json(s, now)
        rows_table.add_row(
            row["id"],
            f"{row['saga']} v{row['version']}",
            row["status"],
            row["step"] or "-",
            "" if row["attempt"] is None else str(row["attempt"]),
            age(s.updated_at, now),
            row["reason"] or "",
        )
    out.print(rows_table)


def _print_totals(shown: int, page: Any, paging: bool) -> None:
    order = [str(s) for s in SagaStatus]
    per_status = ", ".join(
        f"{k}: {page.by_status[k]}" for k in sorted(page.by_status, key=order.index)
    )
    per_status = f" ({per_status})" if per_status else ""
    if page.total == 0:
        console.print("no sagas match", highlight=False)
    elif page.next is not None:
        console.print(
            f"showing {shown} of {page.total}{per_status}; next: the same command with "
            f"--after {page.next.token()}",
            highlight=False,
            soft_wrap=True,
        )
    elif paging or shown < page.total:
        console.print(
            f"showing {shown} of {page.total}{per_status}, the last page",
            highlight=False,
            soft_wrap=True,
        )
    else:
        noun = "saga" if page.total == 1 else "sagas"
        console.print(f"{page.total} {noun}{per_status}", highlight=False, soft_wrap=True)


def show(
    saga_id: Annotated[str, typer.Argument(help="Saga id (see `saga list`).")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one saga: step timeline, ledger transactions and history.

    Each step with its attempts and last error; for chain steps every ledger
    transaction (txid, state, validation code, block, worker host, times); then
    the history, operator actions included (who, when, why).
    """
    from saga.app.errors import SagaNotFound

    c = container(settings(db))
    try:
        record, history = c.orchestrator().get(saga_id)
    except SagaNotFound as exc:
        fail(REFUSED, str(exc), "find it with `saga list` (--status, --name, --older-than)")
    with c.uow_factory() as uow:
        attempts = uow.ledger_attempts.for_saga(saga_id)
    kinds = _step_kinds(c, record)
    data = saga_view(record, history, attempts, kinds)
    if as_json:
        print_json(data)
        return
    _print_saga(data)


def _step_kinds(c: Any, record: SagaRecord) -> dict[str, str]:
    state = record.state
    try:
        definition = c.registry.get(state.name, state.version)
    except Exception:  # the definition is not deployed here; show what the store knows
        return {}
    return {s.name: str(s.kind) for s in definition.steps}


def _print_saga(data: dict[str, Any]) -> None:
    out.print(
        f"[bold]{data['id']}[/] {data['saga']} v{data['version']}: [bold]{data['status']}[/]"
        f"  (created {_short(data['created'])}, last progress {_short(data['updated'])})",
        highlight=False,
        soft_wrap=True,
    )
    if data["reason"]:
        out.print(f"reason: {data['reason']}", highlight=False, soft_wrap=True)
    if data["idempotency_key"]:
        out.print(
            f"idempotency key: {data['idempotency_key']}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    # One line whatever its size: what the caller sent, to grep or paste.
    out.print(
        f"input: {json.dumps(data['input'], sort_keys=True)}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    for s in data["steps"]:
        if (
            s["current"]
            and s["waiting_for_ledger_since"]
            and data["status"]
            in (
                "running",
                "compensating",
            )
        ):
            out.print(
                f"[bold yellow]waiting for the ledger[/] since "
                f"{_short(s['waiting_for_ledger_since'])}: step {s['name']} finds it "
                "unreachable and looks again (SAGA_CHAIN_OUTAGE_BUDGET bounds the wait)",
                highlight=False,
                soft_wrap=True,
            )
    # A step name and status are read and typed back whole; the error may wrap.
    steps = Table(
        "",
        Column("step", no_wrap=True),
        "kind",
        Column("status", no_wrap=True),
        "attempts",
        "failures",
        "undo",
        "last error",
    )
    for s in data["steps"]:
        steps.add_row(
            "▶" if s["current"] else "",
            s["name"],
            s["kind"] or "?",
            s["status"],
            str(s["attempts"]),
            str(s["failures"]),
            str(s["compensation_attempts"]),
            s["last_error"] or "",
        )
    out.print(steps)
    for s in data["steps"]:
        if not s["ledger_attempts"]:
            continue
        # Lines, not a table: a txid is 64 characters and must stay whole to be copied.
        out.print(f"[bold]ledger transactions of {s['name']}[/]")
        for n, a in enumerate(s["ledger_attempts"], 1):
            code = "" if a["code"] is None else f" {a['code_name']} ({a['code']})"
            block = "" if a["block"] is None else f" block {a['block']}"
            out.print(
                f"  {n}. {a['txid']} {a['purpose']} {a['state']}{code}{block}",
                highlight=False,
                soft_wrap=True,
            )
            out.print(
                f"     worker {a['worker'] or '?'}  prepared {_short(a['created'])}  "
                f"submitted {_short(a['submitted']) or '-'}  "
                f"committed {_short(a['committed']) or '-'}",
                highlight=False,
                soft_wrap=True,
            )
    # One line per event, never wrapped: greppable, and a why stays readable.
    out.print("[bold]history[/]")
    for h in data["history"]:
        detail = dict(h["detail"]) if isinstance(h["detail"], dict) else {"detail": h["detail"]}
        step = detail.pop("step", None)
        attempt = detail.pop("attempt", None)
        why = detail.pop("why", None)
        where = f" {step}" if step else ""
        where += f" #{attempt}" if attempt else ""
        who = f" by {h['actor']}" if h["actor"] else ""
        because = f": {why}" if why else ""
        rest = ", ".join(f"{k}={v}" for k, v in detail.items() if v is not None)
        rest = f"  ({rest})" if rest else ""
        out.print(
            f"  {_short(h['at'])}  {h['kind']}{where}{who}{because}{rest}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


def _short(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else ""
