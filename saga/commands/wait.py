"""`saga wait`: block until a saga reaches a status, for scripts and runbooks.

It only reads: each poll is one primary-key lookup of the saga row in the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.text import Text

from saga.commands._common import (
    REFUSED,
    USAGE,
    DbOpt,
    JsonOpt,
    console,
    container,
    fail,
    iso,
    out,
    print_json,
    settings,
)
from saga.core.state import SagaStatus
from saga.ports import SagaRecord

# Exit codes of `saga wait` beyond the shared ones (0 done, 1 not found, 2 usage).
TIMED_OUT = 3
ENDED_ELSEWHERE = 4

TERMINAL = tuple(s for s in SagaStatus if s.terminal)
_ALL = ", ".join(str(s) for s in SagaStatus)


def parse_statuses(values: list[str] | None) -> tuple[SagaStatus, ...]:
    """`--status a,b --status c` as statuses in SagaStatus order; none given: the terminal ones."""
    names = [n.strip().lower() for v in values or () for n in v.split(",") if n.strip()]
    if not names:
        return TERMINAL
    unknown = sorted({n for n in names if n not in {str(s) for s in SagaStatus}})
    if unknown:
        fail(
            USAGE,
            f"--status {', '.join(unknown)}: no such saga status",
            f"give one or more of {_ALL}, separated by commas",
        )
    return tuple(s for s in SagaStatus if str(s) in names)


def wait(
    saga_id: Annotated[str, typer.Argument(help="Saga id (see `saga list`).")],
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help=f"Statuses to wait for, comma-separated ({_ALL}). "
            "Default: any terminal one (completed, compensated, failed).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0,
            help=f"Give up after this many seconds (exit code {TIMED_OUT}). "
            "Default: wait until interrupted.",
            show_default=False,
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between two reads of the saga.")
    ] = 0.5,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Block until the saga reaches one of the given statuses, then print it.

    Polls the store. Prints the saga's status when it stops (JSON with --json,
    also on a timeout). A terminal status that was not asked for ends the wait
    at once: completed and compensated are final, and a failed saga moves only
    when an operator resumes or compensates it.

    Exit codes: 0 reached; 1 no such saga; 2 bad option, configuration or store
    unreachable at the start; 3 timed out (--timeout); 4 the saga ended in a
    terminal status not asked for.
    """
    wanted = parse_statuses(status)
    c = container(settings(db))
    transient = c.transient_errors
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout

    def read() -> SagaRecord | None:
        with c.uow_factory() as uow:
            return uow.sagas.get(saga_id)

    try:
        record = read()
    except Exception as exc:  # a bad URL, a server that is down, a schema never migrated
        fail(
            USAGE,
            f"cannot read saga {saga_id} from the store: {_first_line(exc)}",
            "check that the database runs and that SAGA_DATABASE_URL (or --db) points at it; "
            "a new database needs `saga db upgrade`",
        )
    if record is None:
        fail(REFUSED, f"no saga {saga_id}", "find it with `saga list` (--status, --name)")

    outcome = "reached"
    store_error: str | None = None
    with _spinner(enabled=not as_json and console.is_terminal) as show:
        while True:
            current = record.state.status
            if current in wanted:
                break
            if current.terminal:
                outcome = "ended"
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                outcome = "timeout"
                break
            show(_progress_line(record, wanted, now - started, store_error))
            time.sleep(interval if deadline is None else min(interval, deadline - now))
            try:
                again = read()
            except transient as exc:  # a database restart: keep the last state, keep polling
                store_error = _first_line(exc)
                continue
            store_error = None
            if again is None:  # sagas are never deleted, but a restore might lose it
                fail(REFUSED, f"saga {saga_id} is gone from the store", "see `saga list`")
            record = again

    waited = time.monotonic() - started
    result = _result(record, wanted, outcome, waited)
    # Set when the last read failed: the status shown is the last one read.
    result["store_error"] = store_error
    if as_json:
        print_json(result)
    else:
        _print_result(result)
    if outcome == "timeout":
        fail(
            TIMED_OUT,
            f"saga {saga_id} is still {result['status']} after {waited:.1f}s "
            f"(waited for {'|'.join(result['wanted'])})"
            + (f"; the store did not answer the last read: {store_error}" if store_error else ""),
            f"give a longer --timeout, or see where it stands with `saga show {saga_id}`",
        )
    if outcome == "ended":
        hint = (
            f"it needs an operator: `saga show {saga_id}`, then `saga resume` or `saga compensate`"
            if record.state.status is SagaStatus.FAILED
            else "that status is final"
        )
        fail(
            ENDED_ELSEWHERE,
            f"saga {saga_id} ended {result['status']}, not {'|'.join(result['wanted'])}",
            hint,
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _result(
    record: SagaRecord, wanted: tuple[SagaStatus, ...], outcome: str, waited: float
) -> dict[str, Any]:
    state = record.state
    return {
        "id": state.saga_id,
        "saga": state.name,
        "version": state.version,
        "status": str(state.status),
        "reason": state.reason,
        "step": state.steps[state.current].name,
        "updated": iso(record.updated_at),
        "outcome": outcome,
        "wanted": [str(s) for s in wanted],
        "waited_seconds": round(waited, 3),
    }


def _print_result(result: dict[str, Any]) -> None:
    where = "" if result["outcome"] == "reached" else f" at step {result['step']}"
    out.print(
        f"{result['id']}: {result['status']}{where} (waited {result['waited_seconds']:.1f}s)",
        highlight=False,
        soft_wrap=True,
    )
    if result["reason"]:
        out.print(f"reason: {result['reason']}", highlight=False, soft_wrap=True, markup=False)


def _progress_line(
    record: SagaRecord, wanted: tuple[SagaStatus, ...], elapsed: float, store_error: str | None
) -> str:
    state = record.state
    step = state.steps[state.current]
    attempt = (
        step.compensation_attempts if state.status is SagaStatus.COMPENSATING else step.attempts
    )
    # Short enough for one line of an 80-column terminal; the id is the one given.
    line = (
        f"{elapsed:.0f}s  {state.status} at {step.name} #{attempt}  "
        f"(until {'|'.join(str(s) for s in wanted)})"
    )
    if store_error:
        line += f"; store unreachable, retrying ({store_error})"
    return line


@contextmanager
def _spinner(*, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A status line with a spinner on a terminal; nothing at all otherwise."""
    if not enabled:
        yield lambda _text: None
        return
    with console.status("waiting") as status:
        yield lambda text: status.update(Text(text))
