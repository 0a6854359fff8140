"""`saga wait`: block until sagas reach a status, for scripts and runbooks.

It only reads. However many sagas it waits for, each poll is one query: the
summaries (saga row and current step) of the sagas not yet settled, by primary
key (saga.adapters.sql.saga_search).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from saga.core.state import SagaStatus
from saga.entrypoints.cli._common import (
    REFUSED,
    USAGE,
    WHERE_HELP,
    DbOpt,
    JsonOpt,
    console,
    container,
    fail,
    out,
    parse_status_names,
    parse_where,
    print_json,
    settings,
    summary_json,
)

if TYPE_CHECKING:
    from saga.adapters.sql.saga_search import SagaSummary

# Exit codes of `saga wait` beyond the shared ones (0 done, 1 not found, 2 usage).
TIMED_OUT = 3
ENDED_ELSEWHERE = 4

TERMINAL = tuple(s for s in SagaStatus if s.terminal)
_ALL = ", ".join(str(s) for s in SagaStatus)
# A --where selection larger than this is refused: one IN list per poll stays cheap.
MAX_SAGAS = 10_000


def parse_statuses(values: list[str] | None) -> tuple[SagaStatus, ...]:
    """`--status a,b --status c` as statuses in SagaStatus order; none given: the terminal ones."""
    if not values:
        return TERMINAL
    names = {n for v in values for n in parse_status_names(v, "--status")}
    return tuple(s for s in SagaStatus if str(s) in names)


@dataclass
class _Watched:
    """One saga of the wait: where it stands, and whether (and when) it settled."""

    summary: SagaSummary
    outcome: str | None = None  # "reached", "ended"; None while it may still move
    after: float | None = None  # seconds into the wait when it settled


def wait(
    saga_ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="Saga ids (see `saga list`); or select them with --where.", show_default=False
        ),
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help=f"Statuses to wait for, comma-separated ({_ALL}). "
            "Default: any terminal one (completed, compensated, failed).",
            show_default=False,
        ),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            help=f"Also wait for the sagas this selects when the wait starts: {WHERE_HELP}. "
            "Repeat it: every term must hold.",
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
        float, typer.Option(min=0.05, help="Seconds between two reads of the sagas.")
    ] = 0.5,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Block until every saga given reaches one of the given statuses, then print them.

    Polls the store, one query per poll for all the sagas. Prints each saga's
    status when it stops (JSON with --json, also on a timeout): one id gives one
    object; several ids or --where give {outcome, counts, sagas: [...]}. A
    terminal status that was not asked for settles that saga at once: completed
    and compensated are final, and a failed saga moves only when an operator
    resumes or compensates it.

    Exit codes: 0 all reached; 1 no such saga (or --where selects none); 2 bad
    option, configuration or store unreachable at the start; 3 timed out
    (--timeout) with some not settled; 4 some ended in a terminal status not
    asked for.
    """
    wanted = parse_statuses(status)
    given = list(dict.fromkeys(saga_ids or ()))
    if not given and not where:
        fail(
            USAGE,
            "say which sagas to wait for",
            "give saga ids or --where (e.g. --where status=failed); see `saga wait --help`",
        )
    selection = parse_where(where) if where else None
    single = len(given) == 1 and selection is None
    c = container(settings(db))
    transient = c.transient_errors
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout

    from saga.adapters.sql.saga_search import BadFilter, matching_ids, summaries

    try:
        with c.engine.connect() as connection:
            ids = list(given)
            if selection is not None:
                chosen = matching_ids(connection, selection, at_most=MAX_SAGAS)
                ids += [i for i in chosen if i not in set(given)]
            found = summaries(connection, ids)
    except BadFilter as exc:
        fail(USAGE, f"--where: {exc}", "add --where terms (status=, name=, input.FIELD=)")
    except Exception as exc:  # a bad URL, a server that is down, a schema never migrated
        fail(
            USAGE,
            f"cannot read {_which(given)} from the store: {_first_line(exc)}",
            "check that the database runs and that SAGA_DATABASE_URL (or --db) points at it; "
            "a new database needs `saga db upgrade`",
        )
    missing = [i for i in given if i not in found]
    if missing:
        fail(
            REFUSED,
            f"no saga {', '.join(missing)}",
            "find it with `saga list` (--status, --name, --key, --input)",
        )
    if not ids:
        fail(
            REFUSED,
            f"no saga matches --where {' '.join(where or ())}",
            "see `saga list` with the same filters",
        )

    watched = {i: _Watched(found[i]) for i in ids}
    polls = 0
    store_error: str | None = None
    outcome = "reached"
    with _spinner(enabled=not as_json and console.is_terminal) as show:
        while True:
            elapsed = time.monotonic() - started
            for w in watched.values():
                if w.outcome is None:
                    if w.summary.status in wanted:
                        w.outcome, w.after = "reached", elapsed
                    elif w.summary.status.terminal:
                        w.outcome, w.after = "ended", elapsed
            open_ids = [i for i, w in watched.items() if w.outcome is None]
            if not open_ids:
                if any(w.outcome == "ended" for w in watched.values()):
                    outcome = "ended"
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                outcome = "timeout"
                break
            show(_progress_line(watched, wanted, now - started, store_error))
            time.sleep(interval if deadline is None else min(interval, deadline - now))
            polls += 1
            try:
                with c.engine.connect() as connection:
                    again = summaries(connection, open_ids)
            except transient as exc:  # a database restart: keep the last state, keep polling
                store_error = _first_line(exc)
                continue
            store_error = None
            gone = [i for i in open_ids if i not in again]
            if gone:  # sagas are never deleted, but a restore might lose one
                fail(REFUSED, f"saga {', '.join(gone)} is gone from the store", "see `saga list`")
            for i, summary in again.items():
                watched[i].summary = summary

    waited = time.monotonic() - started
    now_utc = datetime.now(UTC)
    results = [_result(w, wanted, waited, now_utc) for w in watched.values()]
    counts = dict(Counter(w.summary.status.value for w in watched.values()))
    if single:
        data: dict[str, Any] = {**results[0], "store_error": store_error}
    else:
        data = {
            "outcome": outcome,
            "wanted": [str(s) for s in wanted],
            "waited_seconds": round(waited, 3),
            "polls": polls,
            "counts": counts,
            "store_error": store_error,
            "sagas": results,
        }
    if as_json:
        print_json(data)
    else:
        for result in results:
            _print_result(result)
        if not single and outcome == "reached":
            out.print(
                f"{len(results)} sagas: {_counts(counts)} (waited {waited:.1f}s)",
                highlight=False,
            )
    _exit(outcome, watched, wanted, waited, store_error, single, counts)


def _exit(
    outcome: str,
    watched: dict[str, _Watched],
    wanted: tuple[SagaStatus, ...],
    waited: float,
    store_error: str | None,
    single: bool,
    counts: dict[str, int],
) -> None:
    want = "|".join(str(s) for s in wanted)
    reached = sum(1 for w in watched.values() if w.outcome == "reached")
    ended = [w for w in watched.values() if w.outcome == "ended"]
    unreachable = f"; the store did not answer the last read: {store_error}" if store_error else ""
    if outcome == "timeout":
        if single:
            (saga_id,) = watched
            status = watched[saga_id].summary.status
            fail(
                TIMED_OUT,
                f"saga {saga_id} is still {status} after {waited:.1f}s "
                f"(waited for {want}){unreachable}",
                f"give a longer --timeout, or see where it stands with `saga show {saga_id}`",
            )
        still = Counter(str(w.summary.status) for w in watched.values() if w.outcome is None)
        fail(
            TIMED_OUT,
            f"{reached} of {len(watched)} sagas reached {want} after {waited:.1f}s; "
            f"still {_counts(dict(still))}"
            + (f"; ended otherwise: {len(ended)}" if ended else "")
            + unreachable,
            "give a longer --timeout, or see where one stands with `saga show ID`",
        )
    if outcome == "ended":
        failed = any(w.summary.status is SagaStatus.FAILED for w in ended)
        first = ended[0].summary.saga_id
        hint = (
            f"it needs an operator: `saga show {first}`, then `saga resume` or `saga compensate`"
            if failed
            else "that status is final"
        )
        if single:
            fail(
                ENDED_ELSEWHERE,
                f"saga {first} ended {ended[0].summary.status}, not {want}",
                hint,
            )
        other = Counter(str(w.summary.status) for w in ended)
        fail(
            ENDED_ELSEWHERE,
            f"{len(ended)} of {len(watched)} sagas ended in a status not waited for "
            f"({_counts(dict(other))}), not {want}",
            hint,
        )


def _which(ids: list[str]) -> str:
    if len(ids) == 1:
        return f"saga {ids[0]}"
    return "the sagas"


def _counts(counts: dict[str, int]) -> str:
    order = [str(s) for s in SagaStatus]
    return ", ".join(f"{k}: {counts[k]}" for k in sorted(counts, key=order.index))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _result(
    w: _Watched, wanted: tuple[SagaStatus, ...], waited: float, now: datetime
) -> dict[str, Any]:
    return {
        **summary_json(w.summary, now),
        "outcome": w.outcome or "timeout",
        "wanted": [str(s) for s in wanted],
        "waited_seconds": round(waited if w.after is None else w.after, 3),
    }


def _print_result(result: dict[str, Any]) -> None:
    step = result["step"]
    where = "" if result["outcome"] == "reached" or not step else f" at step {step}"
    out.print(
        f"{result['id']}: {result['status']}{where} (waited {result['waited_seconds']:.1f}s)",
        highlight=False,
        soft_wrap=True,
    )
    if result["reason"]:
        out.print(f"reason: {result['reason']}", highlight=False, soft_wrap=True, markup=False)


def _progress_line(
    watched: dict[str, _Watched],
    wanted: tuple[SagaStatus, ...],
    elapsed: float,
    store_error: str | None,
) -> str:
    until = "|".join(str(s) for s in wanted)
    if len(watched) == 1:
        (w,) = watched.values()
        s = w.summary
        undo = s.status is SagaStatus.COMPENSATING
        attempt = s.compensation_attempts if undo else s.attempts
        # Short enough for one line of an 80-column terminal; the id is the one given.
        line = f"{elapsed:.0f}s  {s.status} at {s.step} #{attempt}  (until {until})"
    else:
        settled = sum(1 for w in watched.values() if w.outcome is not None)
        line = f"{elapsed:.0f}s  {settled}/{len(watched)} settled  (until {until})"
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
