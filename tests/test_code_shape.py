"""The shape of the code in pipeline/ and backbones/, read from the source with ``ast``.

Rule: no function (or method, or nested function) is longer than ``MAX_FUNCTION_LINES``
lines, counted from its ``def`` (decorators not included) to its last line, docstring
included. A longer function is cut into named phases that each read top to bottom. The
exceptions are listed in ``LONG_FUNCTIONS`` with their reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "backbones")
MAX_FUNCTION_LINES = 60

# qualified name -> why it may be longer (none today)
LONG_FUNCTIONS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def function_lengths(path: Path, module: str) -> dict[str, int]:
    """Every function of a source file by qualified name (``module.Class.method``,
    ``module.outer.inner``), with its length in lines."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}"
                lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, name)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}.{child.name}")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), module)
    return lengths


def all_function_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            lengths.update(function_lengths(path, _module_name(path)))
    return lengths


def test_no_function_is_longer_than_the_limit():
    long = {
        name: n
        for name, n in all_function_lengths().items()
        if n > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS
    }
    assert not long, (
        f"functions over {MAX_FUNCTION_LINES} lines (cut them into named phases, or list one in "
        f"LONG_FUNCTIONS with the reason): "
        + ", ".join(f"{name} ({n} lines)" for name, n in sorted(long.items()))
    )


def test_every_listed_exception_is_a_long_function():
    """An entry goes when its function is cut down (or renamed): the list stays true."""
    lengths = all_function_lengths()
    stale = {
        name: lengths.get(name)
        for name in LONG_FUNCTIONS
        if lengths.get(name, 0) <= MAX_FUNCTION_LINES
    }
    assert not stale, f"LONG_FUNCTIONS entries that are not long functions: {stale}"


def test_the_count_includes_docstring_and_nested_functions(tmp_path):
    """The measure itself: ``def`` line to last line, methods and inner functions named."""
    source = tmp_path / "sample.py"
    source.write_text(
        "class A:\n"
        "    def method(self):\n"
        '        """Doc."""\n'
        "        def inner():\n"
        "            return 1\n"
        "        return inner()\n"
        "\n"
        "if True:\n"
        "    def guarded():\n"
        "        pass\n"
    )
    assert function_lengths(source, "sample") == {
        "sample.A.method": 5,
        "sample.A.method.inner": 2,
        "sample.guarded": 2,
    }
