"""The import structure of pipeline/ and backbones/, read from the source with ``ast``.

Rules:
- no import cycle among the modules of pipeline/ and backbones/;
- backbones/ is a library: it imports nothing from pipeline/;
- one module per heavy dependency: only pipeline/raster.py imports rasterio, only
  pipeline/parallel.py dask and distributed, only pipeline/registry.py mlflow (exceptions are
  listed in ``LAYER_EXCEPTIONS`` with their reason).

How imports are counted:
- Every import statement counts, wherever it stands: at the top level, inside top-level
  ``if``/``try`` blocks (``if TYPE_CHECKING:`` included: a loop closed through type annotations
  is still a loop to a reader, and breaks as soon as someone drops the guard) and inside
  function bodies. A function-level import only defers the loop to call time (``predict`` and
  ``inference`` importing each other that way was the loop ``predict_task.py`` removed), so
  cycles are checked over all imports. The report says which edges are function-level, so
  a cycle is easy to locate. cli.py's function-level imports of each stage (to keep
  ``pipeline --help`` fast) are fine: no stage imports cli.py.
- Importing ``a.b.c`` counts as an edge to ``a.b.c`` only, not to the packages ``a`` and
  ``a.b`` whose ``__init__`` Python runs first.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "backbones")

# third-party package -> the modules allowed to import it
LAYERS = {
    "rasterio": {"pipeline.raster"},
    "dask": {"pipeline.parallel"},
    "distributed": {"pipeline.parallel"},
    "mlflow": {"pipeline.registry"},
}
# (module, package): why the module may import the package anyway
LAYER_EXCEPTIONS = {
    ("pipeline.pyfunc", "mlflow"): (
        "the pyfunc model is logged 'from code': MLflow runs this file when the model is "
        "loaded, and the file must define a PythonModel subclass and call set_model"
    ),
}


@dataclass(frozen=True)
class Import:
    target: str  # dotted name of the imported module (or of the module a name comes from)
    line: int
    module_level: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imports(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import statement in a module, resolved to dotted module names."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, module_level) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve_from(module, is_package, child)
                for alias in child.names:
                    # `from pipeline import raster` imports the module pipeline.raster
                    submodule = f"{base}.{alias.name}"
                    target = submodule if submodule in known else base
                    found.append(Import(target, child.lineno, module_level))
            visit(child, module_level)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    package = parts if is_package else parts[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    sources = _sources()
    known = set(sources)
    return {module: _imports(module, path, known) for module, path in sources.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing
    itself (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_the_checker_sees_imports_and_cycles(graph):
    """The parser resolves `from pipeline import raster` to the module, and the cycle finder
    finds a loop when there is one (so the tests below can fail)."""
    targets = {i.target for i in graph["pipeline.cli"]}
    assert "pipeline.config" in targets
    assert any(i.target == "pipeline.raster" for i in graph["pipeline.vectors"])
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    edges = {
        module: {i.target for i in imports if i.target in graph}
        for module, imports in graph.items()
    }
    cycles = _cycles(edges)
    deferred = sorted(
        f"{module} -> {i.target} (line {i.line}, inside a function)"
        for cycle in cycles
        for module in cycle
        for i in graph[module]
        if i.target in cycle and not i.module_level
    )
    assert cycles == [], deferred


def test_backbones_import_nothing_from_pipeline(graph):
    upward = [
        f"{module} line {i.line}: {i.target}"
        for module, imports in graph.items()
        if module.split(".")[0] == "backbones"
        for i in imports
        if i.target.split(".")[0] == "pipeline"
    ]
    assert upward == []


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_one_module_per_heavy_dependency(graph, package):
    allowed = LAYERS[package]
    offenders = [
        f"{module} line {i.line}"
        for module, imports in graph.items()
        if module not in allowed and (module, package) not in LAYER_EXCEPTIONS
        for i in imports
        if i.target.split(".")[0] == package
    ]
    assert offenders == []


def test_layer_exceptions_are_still_needed(graph):
    """An exception that no longer applies is removed, so the list stays the truth."""
    for module, package in LAYER_EXCEPTIONS:
        assert any(i.target.split(".")[0] == package for i in graph[module]), (module, package)
