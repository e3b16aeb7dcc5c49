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


def _internal(name: str, known=MODULES) -> str | None:
    """The module of ours that importing `name` loads: `name` itself, or its nearest parent we have."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _edges(tree: ast.AST, module: str, is_package: bool, known=MODULES) -> set[str]:
    """Modules of `known` that the source `tree` of `module` imports (see `imports_of`)."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
        found.update(t for t in (_internal(t, known) for t in targets) if t is not None and t != module)
    return found


def imports_of(module: str) -> set[str]:
    """Modules of ours that `module` imports. `from X import y` counts X (y is looked up in X's namespace,
    so X's `__init__` must have run) and also X.y when that is a module; relative imports are resolved
    against the module's package. The implicit import of a module's parent packages by `import X.y` or
    `from X.y import z` is not an edge (every submodule would otherwise "import" its package's __init__),
    but `from . import y` in a submodule is: it reads its package, whose `__init__` may import it back."""
    path = MODULES[module]
    return _edges(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py")


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


def test_from_package_import_reads_the_package():
    """`from . import x` in a submodule depends on its package's `__init__` as well as on x, so a package
    whose `__init__` imports the submodule back is a cycle; `from .x import y` is not."""
    graph = {}
    source = {"pkg": "from . import a\n", "pkg.a": "from . import b\n", "pkg.b": "from .c import f\n",
              "pkg.c": "def f(): pass\n"}
    for name, text in source.items():
        graph[name] = _edges(ast.parse(text), name, is_package=name == "pkg", known=set(source))
    assert graph["pkg.a"] == {"pkg", "pkg.b"} and graph["pkg.b"] == {"pkg.c"}
    assert find_cycle(graph) == ["pkg", "pkg.a", "pkg"]


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
