"""What every operator command shares: settings, output, exit codes, option types."""

from __future__ import annotations

import getpass
import json
import re
import signal
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from saga.config import ConfigError, Settings
from saga.entrypoints.saga_view import idle_seconds as idle_seconds
from saga.entrypoints.saga_view import iso as iso
from saga.entrypoints.saga_view import summary_view

if TYPE_CHECKING:
    from saga.adapters.sql.saga_search import SagaFilter, SagaSummary
    from saga.bootstrap import Container

OK, REFUSED, USAGE = 0, 1, 2

# Messages and progress go to stderr, results to stdout, so `--json | jq` works.
console = Console(stderr=True)
out = Console()

DbOpt = Annotated[
    str | None, typer.Option("--db", help="Database URL (overrides SAGA_DATABASE_URL).")
]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="Broker URL (overrides SAGA_BROKER_URL).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
WhyOpt = Annotated[str, typer.Option("--why", help="Why (recorded on the saga's history).")]
ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who (recorded; default: your login name).")
]


def settings(db: str | None = None, broker: str | None = None, **more: Any) -> Settings:
    """SAGA_* settings with the command's options on top (None: keep the setting)."""
    try:
        return Settings.from_env(database_url=db, broker_url=broker, **more)
    except ConfigError as exc:
        fail(USAGE, f"configuration error: {exc}", "fix the SAGA_* variable (`saga config`)")


def container(s: Settings) -> Container:
    """The composition root for one command (imported only when a command runs)."""
    from saga.bootstrap import Container

    return Container(s)


def fail(code: int, message: str, hint: str | None = None) -> NoReturn:
    # soft_wrap: a message is one line whatever the width, so logs and greps keep it whole.
    label = "refused" if code == REFUSED else "error"
    console.print(f"[red]{label}:[/] {message}", highlight=False, soft_wrap=True)
    if hint:
        console.print(f"  {hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def table(*columns: str, ids: tuple[str, ...] = (), **options: Any) -> Table:
    """A table whose id columns never wrap: an id is copied into the next command."""
    t = Table(**options)
    for name in columns:
        if name in ids:
            t.add_column(name, no_wrap=True, min_width=36)
        else:
            t.add_column(name)
    return t


def print_json(data: Any) -> None:
    # Plain json rather than rich: rich wraps long strings at the terminal width.
    typer.echo(json.dumps(data, indent=2, default=str))


def actor_name(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "unknown"


def require_why(why: str) -> str:
    if not why.strip():
        fail(USAGE, "--why must say why", 'e.g. --why "ledger peer was down, INC-123"')
    return why.strip()


_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_cutoff(value: str, option: str, now: datetime | None = None) -> datetime:
    """An age (90s, 10m, 2h, 3d) as the time that long ago, or an ISO time (UTC if naive)."""
    now = now or datetime.now(UTC)
    age = _AGE.fullmatch(value.strip())
    if age:
        return now - timedelta(**{_UNITS[age.group(2)]: float(age.group(1))})
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(USAGE, f"{option} {value!r} is neither an age nor a time", "give 10m, 2h, 3d or ISO")
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def age(value: datetime | None, now: datetime | None = None) -> str:
    """A short human age: 42s, 7m, 3h, 2d."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = max(0.0, ((now or datetime.now(UTC)) - value).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def summary_json(s: SagaSummary, now: datetime | None = None) -> dict[str, Any]:
    """The fields every saga has in `saga list`, `saga show` and `saga wait` --json
    (and the API): `saga.entrypoints.saga_view.summary_view`."""
    return summary_view(s, now)


WHERE_HELP = (
    "status=S[,S...], name=N, key=K (idempotency key) or input.FIELD=VALUE (a field of the "
    "saga's input; dots for nested fields; 1250 matches the number and the string)"
)


def parse_where(values: list[str]) -> SagaFilter:
    """`--where` terms (all must hold) as a store filter; a bad one fails with usage help."""
    from saga.adapters.sql.saga_search import BadFilter, InputField, SagaFilter

    statuses: list[str] = []
    name = key = None
    inputs: list[InputField] = []
    for term in values:
        field, sep, value = term.partition("=")
        field = field.strip()
        try:
            if sep and field == "status":
                statuses += parse_status_names(value, "--where status")
            elif sep and field == "name" and value:
                name = value
            elif sep and field == "key" and value:
                key = value
            elif sep and field.startswith("input."):
                inputs.append(InputField.parse(term.strip()[len("input.") :]))
            else:
                raise BadFilter("unknown field")
        except BadFilter as exc:
            fail(USAGE, f"--where {term}: {exc}", f"give {WHERE_HELP}")
    return SagaFilter(
        statuses=tuple(statuses), name=name, idempotency_key=key, inputs=tuple(inputs)
    )


def parse_status_names(text: str, option: str) -> list[str]:
    """Comma-separated saga statuses, checked."""
    from saga.core.state import SagaStatus

    known = [str(s) for s in SagaStatus]
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = sorted({n for n in names if n not in known})
    if unknown or not names:
        fail(
            USAGE,
            f"{option} {', '.join(unknown) or '(empty)'}: no such saga status",
            f"give one or more of {', '.join(known)}, separated by commas",
        )
    return names


# -- the long-running process commands (saga relay, worker, api, beat, watcher, up) --


def env_settings(db: str | None = None, broker: str | None = None, **more: Any) -> Settings:
    """Settings for the process commands (relay, worker, ...): a bad one exits 2, no hint."""
    try:
        return Settings.from_env(database_url=db, broker_url=broker, **more)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def stop_event() -> threading.Event:
    """Set by SIGTERM or SIGINT: a long-running command stops cleanly."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def ledger_container(settings: Settings) -> Container:
    """A container whose Fabric settings are complete and whose files load."""
    if not settings.ledger_configured:
        console.print(
            "[red]configuration error:[/] no ledger: set SAGA_FABRIC_PROFILE and "
            "SAGA_FABRIC_MSP_DIR (or give --profile and --msp-dir)"
        )
        raise typer.Exit(2)
    built = container(settings)
    try:
        built.fabric_access()
    except (OSError, ValueError) as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    return built
