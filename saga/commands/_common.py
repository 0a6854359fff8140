"""What every operator command shares: settings, output, exit codes, option types."""

from __future__ import annotations

import getpass
import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from saga.config import ConfigError, Settings

if TYPE_CHECKING:
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


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
