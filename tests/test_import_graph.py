"""The import graph of pyft's packages has no cycle, lazy imports inside functions included.

Each subpackage (``pyft.train``, ``pyft.align``, ...) and each top-level module (``pyft.models``,
``pyft.errors``, ...) is a node; an edge is any ``import``/``from ... import`` of another node found
anywhere in a file (module level or inside a function), except under ``if TYPE_CHECKING:`` (never
executed). A cycle means two layers each need the other: the lower one must not know the upper.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pyft

ROOT = Path(pyft.__file__).parent


def _node(module: str) -> str | None:
    """The graph node of a dotted module name inside pyft (None outside pyft or for ``pyft`` itself)."""
    parts = module.split(".")
    if parts[0] != "pyft" or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names imported anywhere in ``tree`` (relative imports resolved), TYPE_CHECKING blocks skipped."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pyft import train`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _exists(node: str) -> bool:
    """Whether ``node`` is a subpackage or module of pyft (``from pyft.x import name`` adds names too)."""
    path = ROOT.parent / node.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def import_graph() -> dict[str, set[str]]:
    """``{node: nodes it imports}`` over every ``.py`` file of the package."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        src = _node(module) if module != "pyft" else None
        if src is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets = {_node(name) for name in _imports(tree, module, path.name == "__init__.py")}
        graph.setdefault(src, set()).update(t for t in targets if t and t != src and _exists(t))
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _path(graph: dict[str, set[str]], comp: list[str]) -> str:
    """One cycle through the component, as ``a -> b -> a``, for the failure message."""
    members = set(comp)
    start = comp[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return " -> ".join(path + [start])
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return " <-> ".join(comp)
        path.append(fresh[0])
        seen.add(fresh[0])


def test_pyft_packages_import_without_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among pyft packages: " + "; ".join(_path(graph, c) for c in cycles)


def test_the_cycle_finder_sees_a_lazy_import_cycle():
    # The checker itself must be able to fail: a function-level import that closes a loop is a cycle,
    # one under TYPE_CHECKING is not.
    a = ast.parse("import pyft.b\n")
    b = ast.parse("def f():\n    from pyft.a import x\n")
    c = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pyft.a import x\n")
    graph = {"pyft.a": {_node(n) for n in _imports(a, "pyft.a", False)} - {None},
             "pyft.b": {_node(n) for n in _imports(b, "pyft.b", False)} - {None},
             "pyft.c": {_node(n) for n in _imports(c, "pyft.c", False)} - {None}}
    graph["pyft.a"].add("pyft.c")
    assert find_cycles(graph) == [["pyft.a", "pyft.b"]]
    assert graph["pyft.c"] == set()
