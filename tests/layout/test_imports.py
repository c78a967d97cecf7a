"""The import graph of the package: no circle, every arrow pointing down, imports at the top.

The floors (a module imports only from its own floor or a lower one) are written here, from
the layout the package documents (``augdiff/__init__.py``), not read from the code:

1. ``augdiff`` itself, ``config``, ``files``, ``distributed``, ``models``
2. ``configs`` (the shipped configs) and ``data``
3. ``train``
4. ``sd``
5. ``edm``
6. ``metrics``
7. ``methods``
8. ``analysis``
9. ``pipeline``
10. ``commands`` and ``cli``

Imports of augdiff modules sit at the top of each module (inside functions they hide the
graph), and augdiff modules are not imported by name at run time, except by the command
line's registry of subcommands (``cli.COMMANDS``).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "augdiff"

FLOORS = {
    "augdiff": 1, "augdiff.config": 1, "augdiff.files": 1, "augdiff.distributed": 1,
    "augdiff.models": 1,
    "augdiff.configs": 2, "augdiff.data": 2,
    "augdiff.train": 3,
    "augdiff.sd": 4,
    "augdiff.edm": 5,
    "augdiff.metrics": 6,
    "augdiff.methods": 7,
    "augdiff.analysis": 8,
    "augdiff.pipeline": 9, "augdiff.aot": 9,
    "augdiff.commands": 10, "augdiff.cli": 10,
}
# Run-time imports by name that are a registry, not a hidden arrow.
DYNAMIC_ALLOWED = {"augdiff.cli"}


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    """The floor of the longest prefix of ``module`` in :data:`FLOORS`."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in FLOORS:
            return FLOORS[key]
    raise KeyError(f"{module} is on no floor: add its package to FLOORS")


def imports_of(module: str, path: pathlib.Path, modules: dict[str, pathlib.Path]):
    """``(imported augdiff module, line, at module level?)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
                                | ast.Lambda)
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == "augdiff":
                        out.append((a.name, child.lineno, top))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] == "augdiff":
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        out.append((sub if sub in modules else base, child.lineno, top))
            visit(child, top and not nested)

    visit(tree, True)
    return out


def graph():
    modules = all_modules()
    edges = {}
    for name, path in modules.items():
        edges[name] = [(t, line, top) for t, line, top in imports_of(name, path, modules)
                       if t in modules and t != name]
    return modules, edges


def test_every_module_is_on_a_floor():
    for name in all_modules():
        floor(name)


def test_no_import_runs_up_a_floor():
    _, edges = graph()
    up = [f"{src} (floor {floor(src)}) imports {dst} (floor {floor(dst)}) at line {line}"
          for src, targets in edges.items() for dst, line, _ in targets
          if floor(dst) > floor(src)]
    assert not up, "imports that run back up:\n" + "\n".join(up)


def test_imports_sit_at_the_top_of_modules():
    _, edges = graph()
    inside = [f"{src}:{line} imports {dst} inside a function or class"
              for src, targets in edges.items() for dst, line, top in targets if not top]
    assert not inside, "\n".join(inside)


def test_no_module_is_imported_by_name_at_run_time():
    found = []
    for name, path in all_modules().items():
        if name in DYNAMIC_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
                    and getattr(node.func, "attr", getattr(node.func, "id", "")) in
                    ("import_module", "__import__", "spec_from_file_location")):
                found.append(f"{name}:{node.lineno}")
    assert not found, "run-time imports hide the graph: " + ", ".join(found)


def find_cycle(edges: dict[str, list]) -> list[str] | None:
    """One import circle of ``edges`` (depth-first search), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dst, _, _ in edges.get(node, ()):
            if state.get(dst) == 1:
                return stack[stack.index(dst):] + [dst]
            if dst not in state:
                found = dfs(dst)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_no_import_circle():
    _, edges = graph()
    cycle = find_cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("edges, circular", [
    ({"a": [("b", 1, True)], "b": [("c", 1, True)], "c": [("a", 1, True)]}, True),
    ({"a": [("b", 1, True)], "b": [("c", 1, True)], "c": []}, False),
])
def test_cycle_finder_on_known_graphs(edges, circular):
    assert (find_cycle(edges) is not None) == circular
