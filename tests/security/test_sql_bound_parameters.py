"""SQL only through bound parameters: a scan of the product's code (ast, tracked files).

Flagged: a SQL-executing call (`text(...)`, `exec_driver_sql`, `execute`,
`executemany`, `executescript`) whose statement is built from non-constant
values: an f-string, `%` or `+` formatting, or `.format(...)`. Constants
(literals and UPPER_CASE module names) may be interpolated. SQLAlchemy Core
expressions (`select(...)`, `insert(...)`) are not strings and pass.
"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The shipped packages and migrations; bench/ and scripts/ are developer tools that
# create throwaway databases by name and are not part of the product.
PRODUCT = ("saga/", "tools/saga_devnet/", "saga/entrypoints/celery/", "chaincode/", "db/")
SQL_CALLS = {"text", "exec_driver_sql", "execute", "executemany", "executescript"}

# (file, the interpolated source) -> why it is safe. Identifiers (table or database
# names) cannot be bound parameters; an entry must say where its value comes from.
ALLOWED = {
    ("tools/saga_devnet/ledger_store.py", "sql"): (
        "a range query assembled from literal fragments only; the bounds are bound parameters"
    ),
}


def _product_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", *PRODUCT], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [f for f in out.splitlines() if f.endswith(".py")]


def _constant(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id.isupper()
    if isinstance(node, ast.Attribute):
        return node.attr.isupper()
    return False


def _dynamic_parts(node: ast.AST) -> list[ast.AST] | None:
    """The non-constant values a string expression is built from; None: not built."""
    if isinstance(node, ast.JoinedStr):
        return [
            v.value
            for v in node.values
            if isinstance(v, ast.FormattedValue) and not _constant(v.value)
        ]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        parts = [node.left, node.right]
        if isinstance(node.op, ast.Mod) and isinstance(node.right, ast.Tuple):
            parts = [node.left, *node.right.elts]
        return [p for p in parts if not _constant(p) and _dynamic_parts(p) != []]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
    ):
        return [a for a in [*node.args, *(k.value for k in node.keywords)] if not _constant(a)]
    return None


def violations(
    path: str, source: str, allowed: Mapping[tuple[str, str], str] = ALLOWED
) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in SQL_CALLS:
            continue
        dynamic = _dynamic_parts(node.args[0])
        for part in dynamic or []:
            snippet = ast.unparse(part)
            if (path, snippet) not in allowed:
                found.append(f"{path}:{node.lineno}: {name}(...) formats in {snippet!r}")
    return found


def test_no_sql_statement_is_built_from_non_constant_values() -> None:
    files = _product_files()
    assert any(f.startswith("saga/adapters/sql/") for f in files)
    found = [v for f in files for v in violations(f, (ROOT / f).read_text())]
    assert not found, "SQL built by string formatting (bind parameters instead):\n" + "\n".join(
        found
    )


def test_the_scan_catches_interpolation_and_lets_constants_and_core_through() -> None:
    bad = (
        "conn.execute(text(f'SELECT * FROM sagas WHERE id = {saga_id}'))\n"
        "cur.execute('DELETE FROM t WHERE k = %s' % key)\n"
        "conn.exec_driver_sql('SELECT ' + column)\n"
        "db.execute('SELECT {}'.format(value))\n"
    )
    assert len(violations("x.py", bad)) == 4
    good = (
        "conn.execute(text('SELECT pg_advisory_xact_lock(:key)'), {'key': 1})\n"
        "cur.execute(f'PRAGMA busy_timeout={BUSY_MS}')\n"
        "db.execute('DELETE FROM pending WHERE seq <= ?', (last,))\n"
        "conn.execute(select(sagas).where(sagas.c.saga_id == saga_id))\n"
    )
    assert violations("x.py", good) == []


def test_every_allowlist_entry_is_still_needed() -> None:
    unfiltered = [v for f in _product_files() for v in violations(f, (ROOT / f).read_text(), {})]
    for path, snippet in ALLOWED:
        assert any(v.startswith(f"{path}:") and repr(snippet) in v for v in unfiltered), (
            path,
            snippet,
        )
