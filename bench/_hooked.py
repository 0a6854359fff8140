"""Run a `saga` command with a database round-trip counter installed (bench only).

    BENCH_STMT_DIR=/tmp/x python -m bench._hooked worker --concurrency 2

Counts, per process (Celery pool children count their own), what each engine
sends to the database: statements (SQLAlchemy's `before_cursor_execute`, keyed
by the statement's first words), BEGINs, COMMITs, ROLLBACKs and the pings the
pool sends before handing out a connection that sat idle (saga.adapters.sql.engine).
Written to `<dir>/s-<pid>.json` at most twice a second and at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
import time
from collections import Counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Engine

DIRECTORY = os.environ.get("BENCH_STMT_DIR", "")
_counts: Counter[str] = Counter()
_owner = os.getpid()
_last = 0.0


def _key(statement: str) -> str:
    words = re.sub(r"\s+", " ", statement.strip()).split(" ")
    head = " ".join(words[:4]).replace('"', "")
    if words[0].upper() == "SELECT" and " FROM " in statement.upper():
        table = re.search(r"\bFROM\s+\"?(\w+)", statement, re.I)
        lock = " FOR UPDATE" if "FOR UPDATE" in statement.upper() else ""
        head = f"SELECT FROM {table.group(1) if table else '?'}{lock}"
    return head[:60]


def _bump(key: str) -> None:
    global _owner, _last
    if os.getpid() != _owner:  # a forked child: its parent's counts are not its own
        _counts.clear()
        _owner = os.getpid()
    _counts[key] += 1
    now = time.monotonic()
    if now - _last > 0.5:
        _last = now
        _write()


def _write() -> None:
    if not DIRECTORY or not _counts:
        return
    path = os.path.join(DIRECTORY, f"s-{os.getpid()}.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(dict(_counts), fh)
    os.replace(path + ".tmp", path)


def install() -> None:
    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        _bump(_key(statement))

    @event.listens_for(Engine, "begin")
    def _begin(conn: Any) -> None:
        _bump("BEGIN")

    @event.listens_for(Engine, "commit")
    def _commit(conn: Any) -> None:
        _bump("COMMIT")

    @event.listens_for(Engine, "rollback")
    def _rollback(conn: Any) -> None:
        _bump("ROLLBACK")

    ping = PGDialect_psycopg.do_ping

    def _counted_ping(self: PGDialect_psycopg, dbapi_connection: Any) -> bool:
        _bump("pre-ping")
        return ping(self, dbapi_connection)

    PGDialect_psycopg.do_ping = _counted_ping  # type: ignore[method-assign]

    atexit.register(_write)
    try:
        from celery import signals

        signals.worker_process_shutdown.connect(lambda **_: _write(), weak=False)
    except ImportError:
        pass


if __name__ == "__main__":
    if DIRECTORY:
        install()
    from saga.entrypoints.cli.main import main

    sys.argv = ["saga", *sys.argv[1:]]
    main()
