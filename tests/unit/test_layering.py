"""The tree is the architecture: each layer imports only the layers inside it, and the
product has no import cycle.

Imports are read from the source (function-local ones included), so an import hidden in
a function body to dodge a cycle or a dependency still counts. Imports under
`if TYPE_CHECKING:` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from pathlib import Path

import saga

ROOT = Path(saga.__file__).parent

# Libraries that only adapters and entry points may touch.
IO_LIBRARIES = (
    "sqlalchemy",
    "psycopg",
    "alembic",
    "kombu",
    "amqp",
    "aio_pika",
    "celery",
    "grpc",
    "fabric_protos",
    "google.protobuf",
    "prometheus_client",
    "fastapi",
    "uvicorn",
    "starlette",
    "httpx",
)

# For each inner layer, the product packages it must not reach.
OUTER_LAYERS = ("saga.adapters", "saga.entrypoints", "saga.bootstrap")
LAYER_RULES: dict[str, tuple[str, ...]] = {
    "saga.core": (*IO_LIBRARIES, *OUTER_LAYERS, "saga.app", "saga.ports", "saga.config"),
    "saga.ports": (*IO_LIBRARIES, *OUTER_LAYERS, "saga.app"),
    "saga.app": (*IO_LIBRARIES, *OUTER_LAYERS),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "_migrations" not in p.parts}


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of import nodes that sit under `if TYPE_CHECKING:`."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    return skipped


def imported_names(path: Path, module: str, modules: Collection[str]) -> Iterator[str]:
    """Every module an import statement in `path` names, relative ones resolved.

    `from pkg import name` names `pkg.name` when that is one of `modules`, else `pkg`."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_blocks(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if sub in modules else target


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_layers_exist() -> None:
    modules = product_modules()
    # guards the tests below against checking an empty tree
    for layer in (*LAYER_RULES, "saga.adapters.sql", "saga.entrypoints.cli"):
        assert any(_within(m, layer) for m in modules), layer


def test_inner_layers_import_no_io_library_and_no_outer_layer() -> None:
    offenders: dict[str, list[str]] = {}
    modules = product_modules()
    for module, path in modules.items():
        for layer, forbidden in LAYER_RULES.items():
            if not _within(module, layer):
                continue
            names = imported_names(path, module, modules)
            if bad := sorted({n for n in names for f in forbidden if _within(n, f)}):
                offenders[module] = bad
    assert offenders == {}, offenders


def import_graph() -> dict[str, set[str]]:
    modules = product_modules()
    return {
        module: {n for n in imported_names(path, module, modules) if n in modules and n != module}
        for module, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_product_has_no_import_cycle() -> None:
    graph = import_graph()
    assert sum(len(e) for e in graph.values()) > 100  # the graph was really read
    assert cycles(graph) == []
