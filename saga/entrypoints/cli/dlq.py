"""`saga dlq list|show|replay|drop`: the dead-letter queue, without losing a message.

Every command makes one pass over the queue (see saga.app.dlq for why a pass copies
each kept message to the back instead of requeueing it): afterwards the kept
messages are in their original order, so positions from `saga dlq list` stay
valid while nobody else changes the queue. Message ids (`--id`) always are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from saga.app import dlq
from saga.config import Settings
from saga.entrypoints.cli._common import (
    REFUSED,
    USAGE,
    ActorOpt,
    BrokerOpt,
    DbOpt,
    JsonOpt,
    WhyOpt,
    actor_name,
    console,
    container,
    fail,
    out,
    print_json,
    require_why,
    settings,
)

app = typer.Typer(
    help="The dead-letter queue: list, show, replay or drop poison messages. Reading it "
    "never loses or reorders a message.",
    no_args_is_help=True,
)

IdsOpt = Annotated[
    list[str] | None,
    typer.Option("--id", help="Message id (the task id; repeat for several)."),
]
PositionsArg = Annotated[
    list[int] | None,
    typer.Argument(
        help="Positions as `saga dlq list` shows them (1 = oldest).", show_default=False
    ),
]
SagaOpt = Annotated[str | None, typer.Option("--saga", help="Only messages for this saga id.")]
ReasonOpt = Annotated[
    str | None,
    typer.Option("--reason", help="Only messages whose reason contains this text."),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every message in the queue.")]


@contextmanager
def _progress(what: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    ) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except dlq.DlqError as exc:
        fail(USAGE, str(exc))


@app.command("list")
def list_messages(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    saga_id: Annotated[
        str | None,
        typer.Option(
            "--saga",
            help="Only messages for this saga id (the ones `saga dlq replay/drop --saga` take).",
        ),
    ] = None,
    broker: BrokerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the dead-lettered messages: reason, error, saga/step/attempt, time, worker.

    Positions are places in the whole queue, also with --saga, so they can be
    given to `saga dlq show`, `replay` and `drop`.
    """
    s = settings(broker=broker)
    with _progress("reading the dead-letter queue", not as_json) as progress:
        messages = _run(lambda: container(s).dead_letters().browse(progress))
    total = len(messages)
    if saga_id is not None:
        # The same test replay and drop apply: the saga id the message body names.
        wanted = dlq.Selection(saga_id=saga_id)
        messages = [m for m in messages if wanted.matches(m)]
    rows = [m.summary() for m in messages]
    if as_json:
        print_json(rows[:limit])
        return
    # Two lines per message rather than a table: two 36-character ids leave no
    # room for the reason, which is what an operator reads first.
    for r in rows[:limit]:
        where = "-"
        if r["step"]:
            undo = " (undo)" if r["phase"] == "undo" else ""
            where = f"{r['saga']} {r['step']}{undo} #{r['attempt']}"
        replays = f"  replayed {r['replays']}x" if r["replays"] else ""
        out.print(
            f"[bold]#{r['position']}[/] {r['message_id'] or '(no id)'}  saga {r['saga_id'] or '-'}"
            f"  {where}  {r['error'] or '?'}  {(r['at'] or '')[:19]}  worker "
            f"{r['worker'] or '?'}{replays}",
            highlight=False,
            soft_wrap=True,
        )
        out.print(f"    {r['reason'] or '(no reason recorded)'}", markup=False, soft_wrap=True)
    shown = f" (showing {limit})" if len(rows) > limit else ""
    if saga_id is None:
        out.print(f"{len(rows)} message(s) in {s.dead_letter_queue}{shown}", highlight=False)
    else:
        out.print(
            f"{len(rows)} of {total} message(s) in {s.dead_letter_queue} are for saga "
            f"{saga_id}{shown}",
            highlight=False,
            soft_wrap=True,
        )


@app.command("show")
def show(
    position: Annotated[
        int | None, typer.Argument(help="Position as `saga dlq list` shows it.")
    ] = None,
    message_id: Annotated[str | None, typer.Option("--id", help="Message id.")] = None,
    broker: BrokerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one message: headers, properties and body, with secrets masked."""
    if (position is None) == (message_id is None):
        fail(USAGE, "give a position or --id (one of them)", "e.g. `saga dlq show 3`")
    s = settings(broker=broker)
    with _progress("reading the dead-letter queue", not as_json) as progress:
        found = _run(
            lambda: (
                container(s)
                .dead_letters()
                .find(position=position, message_id=message_id, progress=progress)
            )
        )
    if found is None:
        which = f"position {position}" if position is not None else f"id {message_id}"
        fail(REFUSED, f"no message at {which} in {s.dead_letter_queue}", "see `saga dlq list`")
    details = found.details()
    if as_json:
        print_json(details)
        return
    fields = Table("field", "value", show_header=False)
    for key in (
        "position",
        "message_id",
        "saga_id",
        "saga",
        "step",
        "attempt",
        "phase",
        "reason",
        "error",
        "at",
        "worker",
        "original_exchange",
        "original_routing_key",
        "replays",
        "body_bytes",
    ):
        fields.add_row(key, "" if details[key] is None else str(details[key]))
    out.print(fields)
    if details["history"]:
        out.print("[bold]history[/] (earlier dead-letterings, oldest first, and their replays)")
        for n, past in enumerate(details["history"], 1):
            out.print(
                f"  {n}. {past.get('at') or '?'} on {past.get('worker') or '?'}: "
                f"{past.get('error') or '?'}: {past.get('reason') or '(no reason recorded)'}\n"
                f"     replayed {past.get('replayed_at') or '?'} by "
                f"{past.get('replayed_by') or '?'}: {past.get('why') or ''}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if details["replays"] > len(details["history"]):
            out.print(
                f"  (the {details['replays'] - len(details['history'])} earliest not kept)",
                highlight=False,
            )
    out.print("[bold]properties[/]")
    out.print_json(data=details["properties"], default=str)
    out.print("[bold]headers[/]")
    out.print_json(data=details["headers"], default=str)
    out.print(f"[bold]body[/] ({details['body_bytes']} bytes)")
    if details["body_base64"] is not None:
        for line in dlq.hex_dump(found.body):
            out.print(line, markup=False, highlight=False)
    elif isinstance(details["body"], str):
        out.print(details["body"], markup=False, highlight=False)
    else:
        out.print_json(data=details["body"], default=str)


def _selection(
    positions: list[int] | None,
    ids: list[str] | None,
    saga_id: str | None,
    reason: str | None,
    every: bool,
) -> dlq.Selection:
    selection = dlq.Selection(
        positions=frozenset(positions or ()),
        ids=frozenset(ids or ()),
        saga_id=saga_id,
        reason=reason,
        every=every,
    )
    if selection.empty:
        fail(USAGE, "say which messages", "give positions, --id, --saga, --reason, or --all")
    return selection


def _describe(selection: dlq.Selection) -> str:
    if selection.every:
        return "every message"
    parts = []
    if selection.positions:
        parts.append("position(s) " + ", ".join(map(str, sorted(selection.positions))))
    if selection.ids:
        parts.append("id(s) " + ", ".join(sorted(selection.ids)))
    if selection.saga_id:
        parts.append(f"saga {selection.saga_id}")
    if selection.reason:
        parts.append(f"reason containing {selection.reason!r}")
    return "the messages with " + " and ".join(parts)


def _record(
    s: Settings, result: dlq.PassResult, action: dlq.Action, who: str, why: str
) -> list[str]:
    c = container(s)
    c.configure_logging()
    done = result.replayed if action is dlq.Action.REPLAY else result.dropped
    try:
        orchestrator = c.orchestrator()
    except Exception as exc:  # the broker action stands; say what was not recorded
        console.print(f"[yellow]not recorded on the sagas' history:[/] {exc}", soft_wrap=True)
        return dlq.record(done, action, actor=who, why=why, queue=s.dead_letter_queue, note=None)

    def note(saga_id: str, kind: str, detail: dict[str, Any]) -> bool:
        return orchestrator.note(saga_id, kind, detail, actor=who)

    return dlq.record(done, action, actor=who, why=why, queue=s.dead_letter_queue, note=note)


def _report(
    s: Settings,
    result: dlq.PassResult,
    action: dlq.Action,
    selection: dlq.Selection,
    unrecorded: list[str],
    as_json: bool,
) -> None:
    done = result.replayed if action is dlq.Action.REPLAY else result.dropped
    found_positions = {m.position for m in [*done, *result.refused]}
    found_ids = {m.message_id for m in [*done, *result.refused]}
    missing = sorted(
        [str(p) for p in selection.positions - found_positions]
        + [i for i in selection.ids - found_ids]
    )
    verb = "replayed" if action is dlq.Action.REPLAY else "dropped"
    for m in done:
        if action is dlq.Action.REPLAY and m.replays:
            console.print(
                f"[yellow]warning:[/] #{m.position} {m.message_id or '(no id)'} was replayed "
                f"{m.replays} time(s) before and was dead-lettered again each time (now: "
                f"{m.reason or 'no reason recorded'}); unless its cause is fixed it comes back",
                highlight=False,
                soft_wrap=True,
            )
    if as_json:
        print_json(
            {
                "action": verb,
                "queue": s.dead_letter_queue,
                "messages": [m.summary() for m in done],
                "refused": [m.summary() for m in result.refused],
                "not_found": missing,
                "history_not_recorded": unrecorded,
                "left_in_queue": len(result.seen) - len(done),
            }
        )
    else:
        for m in result.refused:
            out.print(
                f"not replayed #{m.position} {m.message_id or '(no id)'} saga "
                f"{m.saga_id or '-'}: replayed {m.replays} time(s) already",
                highlight=False,
                soft_wrap=True,
            )
        for m in done:
            out.print(
                f"{verb} #{m.position} {m.message_id or '(no id)'} saga {m.saga_id or '-'}",
                highlight=False,
                soft_wrap=True,
            )
        out.print(
            f"{len(done)} message(s) {verb}; {len(result.seen) - len(done)} left in "
            f"{s.dead_letter_queue}",
            highlight=False,
        )
        if action is dlq.Action.REPLAY and done:
            out.print(
                "a message that is still poison comes back with its reason: check "
                "`saga dlq list` in a few seconds",
                highlight=False,
                soft_wrap=True,
            )
        if unrecorded:
            console.print(
                "[yellow]the action is logged but not on the history of:[/] "
                + " ".join(unrecorded),
                soft_wrap=True,
            )
    if missing:
        fail(REFUSED, f"not in {s.dead_letter_queue}: {', '.join(missing)}", "see `saga dlq list`")
    if result.refused:
        most = max(m.replays for m in result.refused)
        fail(
            REFUSED,
            f"{len(result.refused)} message(s) left in {s.dead_letter_queue}: replayed "
            f"{most} time(s) already and dead-lettered again each time, so a replay would "
            "only loop",
            "read its history (`saga dlq show POSITION`), fix the cause, then replay it with "
            f"--max-replays {most + 1}; or drop it",
        )
    if not done:
        fail(REFUSED, f"no message matched {_describe(selection)}", "see `saga dlq list`")


@app.command("replay")
def replay(
    why: WhyOpt,
    positions: PositionsArg = None,
    ids: IdsOpt = None,
    saga_id: SagaOpt = None,
    reason: ReasonOpt = None,
    every: AllOpt = False,
    max_replays: Annotated[
        int,
        typer.Option(
            min=1,
            help="Leave a message in the queue if it was replayed this many times already "
            "(each time it came back); raise it once the cause is fixed.",
        ),
    ] = dlq.DEFAULT_MAX_REPLAYS,
    actor: ActorOpt = None,
    broker: BrokerOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send selected messages back to the step exchange, then remove them from the DLQ.

    Each is published with a confirm before it is removed; a message that is
    still poison returns to the DLQ with its new reason, its replay count and
    history (earlier reasons, who replayed it, when, why). Fix the cause first
    (e.g. deploy the saga definitions the workers lacked). Recorded in the log
    and on the history of the saga each message names.
    """
    selection = _selection(positions, ids, saga_id, reason, every)
    reason_text = require_why(why)
    who = actor_name(actor)
    s = settings(db, broker)
    replayer = dlq.Replayer(actor=who, why=reason_text)
    with _progress("replaying", not as_json) as progress:
        result = _run(
            lambda: (
                container(s)
                .dead_letters()
                .replay(selection, progress, replayer=replayer, max_replays=max_replays)
            )
        )
    unrecorded = _record(s, result, dlq.Action.REPLAY, who, reason_text)
    _report(s, result, dlq.Action.REPLAY, selection, unrecorded, as_json)


@app.command("drop")
def drop(
    why: WhyOpt,
    positions: PositionsArg = None,
    ids: IdsOpt = None,
    saga_id: SagaOpt = None,
    reason: ReasonOpt = None,
    every: AllOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    actor: ActorOpt = None,
    broker: BrokerOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete selected messages from the DLQ for good (asks first unless --yes).

    Recorded in the log and on the history of the saga each message names.
    """
    selection = _selection(positions, ids, saga_id, reason, every)
    reason_text = require_why(why)
    who = actor_name(actor)
    s = settings(db, broker)
    if not yes and not typer.confirm(
        f"Drop {_describe(selection)} from {s.dead_letter_queue}? This cannot be undone",
        err=True,
    ):
        fail(REFUSED, "nothing dropped", "answer y, or pass --yes in scripts")
    with _progress("dropping", not as_json) as progress:
        result = _run(lambda: container(s).dead_letters().drop(selection, progress))
    unrecorded = _record(s, result, dlq.Action.DROP, who, reason_text)
    _report(s, result, dlq.Action.DROP, selection, unrecorded, as_json)
