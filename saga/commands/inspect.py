"""`saga list` and `saga show`: what the sagas are doing, for people and scripts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from saga.commands._common import (
    REFUSED,
    DbOpt,
    JsonOpt,
    age,
    container,
    fail,
    iso,
    out,
    parse_cutoff,
    print_json,
    settings,
    table,
)
from saga.core.state import SagaStatus
from saga.ports import HistoryEntry, LedgerAttemptRecord, SagaRecord


def list_sagas(
    status: Annotated[
        SagaStatus | None, typer.Option(help="Only sagas in this state.", case_sensitive=False)
    ] = None,
    name: Annotated[str | None, typer.Option(help="Only sagas of this name.")] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Only sagas whose last progress is older than this: an age (90s, 10m, 2h, "
            "3d) or an ISO time. Lists oldest first, the ones stuck longest at the top.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List sagas, newest first (oldest first with --older-than)."""
    cutoff = parse_cutoff(older_than, "--older-than") if older_than else None
    c = container(settings(db))
    with c.uow_factory() as uow:
        records = uow.sagas.list(
            status=str(status) if status else None, name=name, older_than=cutoff, limit=limit
        )
    now = datetime.now(UTC)
    rows = [_row(r, now) for r in records]
    if as_json:
        print_json(rows)
        return
    rows_table = table("id", "saga", "status", "step", "attempt", "idle", "reason", ids=("id",))
    for row in rows:
        rows_table.add_row(
            row["id"],
            row["saga"],
            row["status"],
            row["step"],
            str(row["attempt"]),
            row["idle"],
            row["reason"] or "",
        )
    out.print(rows_table)
    if not rows:
        out.print("no sagas match")


def _row(r: SagaRecord, now: datetime) -> dict[str, Any]:
    state = r.state
    step = state.steps[state.current]
    compensating = state.status is SagaStatus.COMPENSATING
    return {
        "id": r.saga_id,
        "saga": f"{state.name} v{state.version}",
        "name": state.name,
        "version": state.version,
        "status": str(state.status),
        "step": step.name,
        "phase": "undo" if compensating else "do",
        "attempt": step.compensation_attempts if compensating else step.attempts,
        "created": iso(r.created_at),
        "updated": iso(r.updated_at),
        "idle": age(r.updated_at, now),
        "reason": state.reason,
        "waiting_for_ledger_since": iso(step.waiting_since),
    }


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
    from saga.orchestrator import SagaNotFound

    c = container(settings(db))
    try:
        record, history = c.orchestrator().get(saga_id)
    except SagaNotFound as exc:
        fail(REFUSED, str(exc), "find it with `saga list` (--status, --name, --older-than)")
    with c.uow_factory() as uow:
        attempts = uow.ledger_attempts.for_saga(saga_id)
    kinds = _step_kinds(c, record)
    data = _saga_json(record, history, attempts, kinds)
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


def _code_name(code: int | None) -> str | None:
    if code is None:
        return None
    try:
        from saga.fabric.messages import validation_code_name
    except ImportError:  # protobuf bindings missing in a slim install
        return str(code)
    return validation_code_name(code)


def _attempt_json(a: LedgerAttemptRecord) -> dict[str, Any]:
    # Never the envelope: it is a signed transaction, not something to paste around.
    return {
        "txid": a.txid,
        "purpose": a.purpose,
        "channel": a.channel,
        "state": str(a.state),
        "code": a.code,
        "code_name": _code_name(a.code),
        "block": a.block,
        "worker": a.worker,
        "created": iso(a.created_at),
        "submitted": iso(a.submitted_at),
        "committed": iso(a.committed_at),
    }


def _saga_json(
    record: SagaRecord,
    history: list[HistoryEntry],
    attempts: list[LedgerAttemptRecord],
    kinds: dict[str, str],
) -> dict[str, Any]:
    state = record.state
    return {
        "id": state.saga_id,
        "saga": state.name,
        "version": state.version,
        "status": str(state.status),
        "reason": state.reason,
        "current_step": state.steps[state.current].name,
        "created": iso(record.created_at),
        "updated": iso(record.updated_at),
        "input": record.input,
        "data": record.data,
        "steps": [
            {
                "name": s.name,
                "kind": kinds.get(s.name),
                "status": str(s.status),
                "current": i == state.current,
                "attempts": s.attempts,
                "failures": s.failures,
                "compensation_attempts": s.compensation_attempts,
                "compensation_failures": s.compensation_failures,
                "last_error": s.last_error,
                "waiting_for_ledger_since": iso(s.waiting_since),
                "ledger_attempts": [_attempt_json(a) for a in attempts if a.step == s.name],
            }
            for i, s in enumerate(state.steps)
        ],
        "history": [
            {
                "at": h.at.isoformat(),
                "kind": h.kind,
                "detail": h.detail,
                "actor": h.actor,
                "why": h.detail.get("why") if isinstance(h.detail, dict) else None,
            }
            for h in history
        ],
    }


def _print_saga(data: dict[str, Any]) -> None:
    out.print(
        f"[bold]{data['id']}[/] {data['saga']} v{data['version']}: [bold]{data['status']}[/]"
        f"  (created {_short(data['created'])}, last progress {_short(data['updated'])})",
        highlight=False,
        soft_wrap=True,
    )
    if data["reason"]:
        out.print(f"reason: {data['reason']}", highlight=False, soft_wrap=True)
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
    steps = Table("", "step", "kind", "status", "attempts", "failures", "undo", "last error")
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
