"""The pages that read: overview, saga list, saga page (with its ledger reads)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from saga.adapters.sql import console_reads
from saga.adapters.sql.saga_search import (
    BadFilter,
    Cursor,
    InputField,
    SagaFilter,
    count_matching,
    search,
)
from saga.app.errors import SagaNotFound
from saga.core.definitions import chain_key
from saga.core.errors import OrchestrationError
from saga.core.state import SagaStatus
from saga.entrypoints.http.ui.chart import SERIES, last_hour
from saga.entrypoints.http.ui.console import PREFIX, Console
from saga.entrypoints.saga_view import saga_view, step_kinds, summary_view

log = logging.getLogger("saga.console")

PAGE_SIZE = 50
# Counting every match of a broad filter would cost a pass over a million sagas.
COUNT_CAP = 10_000
STATUSES = [str(s) for s in SagaStatus]
_MAX_TEXT = 200


def routes(console: Console) -> APIRouter:
    router = APIRouter()
    services = console.services

    @router.get("/")
    async def overview(request: Request) -> Response:
        session = console.page(request)
        data = await run_in_threadpool(_overview, console)
        return console.render(request, "overview.html", data, session)

    @router.get("/sagas")
    async def saga_list(request: Request) -> Response:
        session = console.page(request)
        q = request.query_params
        form = {
            k: (q.get(k) or "").strip()[:_MAX_TEXT]
            for k in ("status", "name", "step", "error", "key", "older", "after", "waiting")
        }
        inputs = [v.strip()[:_MAX_TEXT] for v in q.getlist("input") if v.strip()]
        error = None
        page = None
        total = 0
        try:
            where, after = _filter(form, inputs)
            page, total = await run_in_threadpool(_search, console, where, after)
        except BadFilter as exc:
            error = str(exc)
        rows = [summary_view(s) for s in page.summaries] if page else []
        return console.render(
            request,
            "sagas.html",
            {
                "form": form,
                "inputs": inputs or [""],
                "statuses": STATUSES,
                "rows": rows,
                "next": page.next.token() if page and page.next else None,
                "total": total,
                "cap": COUNT_CAP,
                "error": error,
                "query": _query_without_after(request),
            },
            session,
            status=400 if error else 200,
        )

    @router.get("/sagas/{saga_id}")
    async def saga_page(request: Request, saga_id: str, read_ledger: int = 0) -> Response:
        session = console.page(request)
        try:
            view = await run_in_threadpool(_view, console, saga_id)
        except SagaNotFound:
            return console.render(
                request,
                "not_found.html",
                {"what": f"No saga with id {saga_id[:_MAX_TEXT]!r}."},
                session,
                status=404,
            )
        ledger = None
        if read_ledger:
            ledger = await run_in_threadpool(_ledger_reads, console, view)
        return console.render(
            request,
            "saga.html",
            {
                "saga": view,
                "ledger": ledger,
                "ledger_configured": services.ledger is not None,
                "done": request.query_params.get("done"),
                "durations": _durations(view),
            },
            session,
        )

    return router


def _overview(console: Console) -> dict[str, Any]:
    s = console.services
    with s.engine.connect() as connection:
        data = console_reads.overview(connection)
    dlq_depth = s.queue_admin.dead_letter_depth()
    step_depth = s.queue_admin.step_queue_depth()
    chain = s.ledger.chain_info() if s.ledger is not None else None
    chart = last_hour(data.buckets)
    return {
        "o": data,
        "chart": chart,
        "series": SERIES,
        "dlq_depth": dlq_depth,
        "step_depth": step_depth,
        "chain": chain,
        "throughput": data.finished_last_hour / 60.0,
        "statuses": STATUSES,
        "now": datetime.now(UTC),
    }


def _filter(form: dict[str, str], inputs: list[str]) -> tuple[SagaFilter, Cursor | None]:
    older = None
    if form["older"]:
        try:
            minutes = float(form["older"])
        except ValueError:
            raise BadFilter(
                f"age {form['older']!r} is not a number of minutes; e.g. 30 for sagas with no "
                "progress in the last half hour"
            ) from None
        older = datetime.now(UTC) - timedelta(minutes=minutes)
    if form["status"] and form["status"] not in STATUSES:
        raise BadFilter(f"status {form['status']!r} is not one of {', '.join(STATUSES)}")
    where = SagaFilter(
        statuses=(form["status"],) if form["status"] else (),
        name=form["name"] or None,
        idempotency_key=form["key"] or None,
        older_than=older,
        inputs=tuple(InputField.parse(i) for i in inputs),
        step=form["step"] or None,
        error=form["error"] or None,
        waiting_for_ledger=form["waiting"] == "1",
    )
    after = Cursor.parse(form["after"]) if form["after"] else None
    return where, after


def _search(console: Console, where: SagaFilter, after: Cursor | None) -> tuple[Any, int]:
    """A page, and on the first page how many match (capped: see count_matching)."""
    with console.services.engine.connect() as connection:
        page = search(connection, where, limit=PAGE_SIZE, after=after, totals=False)
        count = -1 if after is not None else count_matching(connection, where, at_most=COUNT_CAP)
        return page, count


def _query_without_after(request: Request) -> str:
    from urllib.parse import urlencode

    pairs = [(k, v) for k, v in request.query_params.multi_items() if k != "after" and v]
    return urlencode(pairs)


def _view(console: Console, saga_id: str) -> dict[str, Any]:
    orchestrator = console.services.orchestrator
    if len(saga_id) > _MAX_TEXT or not saga_id.isprintable():
        raise SagaNotFound(saga_id[:_MAX_TEXT])
    record, history = orchestrator.get(saga_id)
    view = saga_view(
        record,
        history,
        orchestrator.reader.ledger_attempts(saga_id),
        step_kinds(orchestrator.registry, record.state),
    )
    view["chain_calls"] = _chain_calls(console, record.state.name, record.state.version)
    return view


def _chain_calls(console: Console, name: str, version: int) -> dict[str, dict[str, str]]:
    try:
        definition = console.services.orchestrator.registry.get(name, version)
    except OrchestrationError:
        return {}
    channel = console.services.settings.fabric_channel
    return {
        s.name: {"chaincode": s.chain.chaincode, "channel": s.chain.channel or channel}
        for s in definition.steps
        if s.chain is not None
    }


def _ledger_reads(console: Console, view: dict[str, Any]) -> dict[str, Any]:
    """For each chain step: the chaincode's record under each key, and each txid's lookup."""
    ledger = console.services.ledger
    if ledger is None:
        return {}
    out: dict[str, Any] = {}
    for step in view["steps"]:
        call = view["chain_calls"].get(step["name"])
        if call is None:
            continue
        records = []
        for purpose in ("do", "undo"):
            key = chain_key(view["id"], step["name"], purpose)
            try:
                records.append(
                    {"key": key, "record": ledger.record(call["channel"], call["chaincode"], key)}
                )
            except Exception as exc:
                records.append({"key": key, "error": str(exc) or type(exc).__name__})
        txs = {}
        for attempt in step["ledger_attempts"]:
            try:
                found = ledger.transaction(call["channel"], attempt["txid"])
                txs[attempt["txid"]] = {
                    "code": found.validation_code_name,
                    "block": found.block,
                    "valid": found.valid,
                }
            except Exception as exc:
                txs[attempt["txid"]] = {"error": str(exc) or type(exc).__name__}
        out[step["name"]] = {"records": records, "transactions": txs}
    return out


def _durations(view: dict[str, Any]) -> dict[str, float]:
    """Seconds to each step's success from the step before it (or the start, or the
    operator's resume or retry that set it going again)."""
    out: dict[str, float] = {}
    mark: datetime | None = None
    for h in view["history"]:
        at = datetime.fromisoformat(h["at"])
        if h["kind"] in ("started", "resume requested", "retry requested"):
            # Time waiting for an operator is not the step's.
            mark = at
        elif h["kind"] == "step succeeded" and isinstance(h["detail"], dict):
            step = h["detail"].get("step")
            if mark is not None and isinstance(step, str):
                out[step] = max(0.0, (at - mark).total_seconds())
            mark = at
    return out


__all__ = ["PREFIX", "routes"]
