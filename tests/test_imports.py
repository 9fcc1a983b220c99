"""Imports flow one way: no module of the package imports, through any chain, one that imports it.

The graph is read from the source with ``ast`` (nothing is imported): an edge for every
``import fdpipe...`` / ``from fdpipe... import`` of one package module by another, at module level
(what runs when the module is imported; ``if TYPE_CHECKING:`` blocks excluded). In the dataset job
the imports inside functions count too: a lazy import there (the Ray engine) must not close a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The three source folders of the import package (pyproject.toml's package-dir).
FOLDERS = {"fdpipe": REPO / "pipeline", "fdpipe.export": REPO / "export",
           "fdpipe.kernels": REPO / "kernels"}  # fmt: skip


def package_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def import_nodes(body: list[ast.stmt], *, in_functions: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements of ``body``, descending into blocks; into function bodies only when
    ``in_functions``; never into ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            found += import_nodes(node.orelse, in_functions=in_functions)
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not in_functions:
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                found += import_nodes([child], in_functions=in_functions)
            elif isinstance(child, ast.excepthandler):
                found += import_nodes(child.body, in_functions=in_functions)
    return found


def imported(
    module: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]
) -> set[str]:
    """The package modules ``node`` (in ``module``) imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & known
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level - 1
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    names = {base} | {f"{base}.{alias.name}" for alias in node.names}  # a submodule by name
    return names & known


def import_graph(*, in_functions: bool, within: str = "fdpipe") -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    graph = {}
    for module, path in modules.items():
        if module != within and not module.startswith(within + "."):
            continue
        nodes = import_nodes(ast.parse(path.read_text()).body, in_functions=in_functions)
        edges = set().union(*(imported(module, path, node, known) for node in nodes))
        graph[module] = {m for m in edges - {module} if m == within or m.startswith(within + ".")}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a path whose last module is its first), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_graph_sees_the_package() -> None:
    graph = import_graph(in_functions=False)
    assert len(graph) > 60
    assert "fdpipe.job.config" in graph["fdpipe.job.run"]
    assert "fdpipe.kernels.postprocess" in graph["fdpipe.kernels.base"]
    assert "fdpipe.job.ray_engine" in import_graph(in_functions=True)["fdpipe.job.run"]


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"a2"}, "a2": set(), "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_cycle_finds_loops(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert cycle(graph) == expected


def test_the_package_has_no_import_cycle() -> None:
    found = cycle(import_graph(in_functions=False))
    assert found is None, " -> ".join(found or [])


def test_the_job_has_no_import_cycle_even_through_lazy_imports() -> None:
    found = cycle(import_graph(in_functions=True, within="fdpipe.job"))
    assert found is None, " -> ".join(found or [])
