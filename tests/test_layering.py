"""The import graph between edgec modules follows the layering and has no cycles.

Every module under ``src/edgec`` is parsed with :mod:`ast` (no import runs); every ``import``
and ``from ... import`` statement, at module level or inside a function, becomes an edge from the
importing module to the edgec module it names. The checks:

- the runtime package (it is copied into bundles) imports nothing from the compiler side;
- the graph passes import no configuration, runtime, compiler or bundle code;
- the configuration does not import the TVM backend;
- no import cycle between edgec modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / "edgec").rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest edgec module that ``name`` is or lies in (``a.b.func`` -> ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                keep = len(base) - node.level + (1 if is_package else 0)
                base = ".".join(base[:keep])
                prefix = f"{base}.{node.module}" if node.module else base
            else:
                prefix = node.module or ""
            # ``from pkg import mod`` names a module; ``from mod import func`` names the module
            names = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
            names = [n for n in names if n != prefix] or [prefix]
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module and target.startswith("edgec"):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


_RULES = [
    (
        "edgec.runtime",
        ("edgec.compiler", "edgec.passes", "edgec.targets", "edgec.bundle", "edgec.cli"),
    ),
    ("edgec.passes", ("edgec.config", "edgec.runtime", "edgec.compiler", "edgec.bundle")),
    ("edgec.config", ("edgec.targets.tvm",)),
]


def _violations() -> set[tuple[str, str]]:
    found = set()
    for module, targets in _graph().items():
        for layer, forbidden in _RULES:
            if _in(module, layer):
                found |= {(module, t) for t in targets if any(_in(t, f) for f in forbidden)}
    return found


def _cycles() -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_level_imports():
    """A function-level import is an edge (the students' ladder imports convert lazily)."""
    graph = _graph()
    assert "edgec.compiler.students.distill" in graph["edgec.compiler.students.derive"]


def test_no_import_breaks_the_layering():
    """Runtime imports no compiler side; passes import no config/runtime/compiler/bundle;
    config imports no TVM backend."""
    assert _violations() == set()


def test_no_import_cycle_between_edgec_modules():
    """No module reaches itself through imports."""
    assert set(_cycles()) == set()
