"""The import graph of `genpercept_cli` and `benchmarks`, read from the source with `ast`: no cycles, the
library below the command line, and a command line that loads without torch (`genpercept --help`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("genpercept_cli", "benchmarks")
CLI = "genpercept_cli.cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement, at any depth (functions, methods, try blocks), except those under
    `if TYPE_CHECKING:`, which never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = node.orelse
        stack.extend(children)


def _internal(name: str) -> str | None:
    """The module of ours that importing `name` loads: `name` itself, or its nearest parent we have."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Modules of ours that `module` imports. `from X import y` counts X.y when it is a module, else X;
    relative imports are resolved against the module's package. The implicit import of a module's parent
    packages is not an edge (every submodule would otherwise "import" its package's __init__)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        found.update(t for t in map(_internal, targets) if t is not None and t != module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, colours white/grey/black)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_is_read():
    """Guards the reader itself: a few edges that must be there, relative and inside functions."""
    assert "genpercept_cli.errors" in GRAPH["genpercept_cli.predict"]
    assert "genpercept_cli.runtime.runner" in GRAPH["genpercept_cli.predict"]  # inside run_predict
    assert "genpercept_cli.resize" in GRAPH["genpercept_cli.models.base"]  # from ..resize
    assert "benchmarks.speed" in GRAPH[f"{CLI}.bench"]  # inside the command


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


ENTRY_POINTS = ("genpercept_cli.__main__",)  # `python -m genpercept_cli`: the command line itself


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("genpercept_cli")
                                          and not m.startswith(CLI) and m not in ENTRY_POINTS))
def test_library_imports_neither_the_command_line_nor_benchmarks(module):
    wrong = sorted(m for m in GRAPH[module] if m.startswith((CLI, "benchmarks")))
    assert not wrong, f"{module} imports {', '.join(wrong)}"


def test_the_command_line_loads_without_torch():
    code = ("import sys, genpercept_cli.cli; heavy = {'torch', 'diffusers'} & set(sys.modules); "
            "assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
