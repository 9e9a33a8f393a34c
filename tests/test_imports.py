"""The package map and the imports agree: product code never imports ``tests.support``, and no
two of dataflow_mm's modules import each other, directly or in a ring (lazy imports inside
functions count; ``if TYPE_CHECKING:`` imports do not, they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dataflow_mm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere in the module except under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(name: str) -> set[str]:
    """The modules ``name`` imports (absolute names; ``from pkg import submodule`` is the submodule)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
        found.update(submodules or {base})
    return found


def product_graph() -> dict[str, set[str]]:
    """Module -> the dataflow_mm modules it imports, for every product module (``testing`` excluded)."""
    return {
        name: {other for other in imported_modules(name) if other in MODULES and other != name}
        for name in MODULES
        if not name.startswith("tests.support")
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_product_modules_never_import_the_testing_package() -> None:
    offenders = sorted(
        f"{name} imports {other}"
        for name in MODULES
        if not name.startswith("tests.support")
        for other in imported_modules(name)
        if other == "tests.support" or other.startswith("tests.support.")
    )
    assert offenders == []


def upward_imports(graph: dict[str, set[str]], layer: str, higher: tuple[str, ...]) -> list[str]:
    """The imports from a module of ``layer`` (a package name) into one of the ``higher`` packages."""
    return sorted(
        f"{name} imports {other}"
        for name, others in graph.items()
        if name == layer or name.startswith(layer + ".")
        for other in others
        if any(other == up or other.startswith(up + ".") for up in higher)
    )


def test_models_layer_depends_on_neither_serving_nor_scoring() -> None:
    higher = ("dataflow_mm.serving", "dataflow_mm.scoring", "dataflow_mm.operators", "dataflow_mm.pipeline")
    assert upward_imports(product_graph(), "dataflow_mm.models", higher) == []


STORAGE_HIGHER = (
    "dataflow_mm.serving",
    "dataflow_mm.scoring",
    "dataflow_mm.models",
    "dataflow_mm.operators",
    "dataflow_mm.pipeline",
    "dataflow_mm.engine",
    "dataflow_mm.report",
    "dataflow_mm.export",
)


def test_storage_layer_imports_no_higher_layer() -> None:
    """Storage keeps files: it reads no serving, scoring, model, operator, pipeline or runner module."""
    assert upward_imports(product_graph(), "dataflow_mm.storage", STORAGE_HIGHER) == []


def test_the_layer_check_sees_storage_importing_serving() -> None:
    graph = {"dataflow_mm.storage.downloads": {"dataflow_mm.serving.api_serving", "dataflow_mm.common.retry"}}
    assert upward_imports(graph, "dataflow_mm.storage", STORAGE_HIGHER) == [
        "dataflow_mm.storage.downloads imports dataflow_mm.serving.api_serving"
    ]


def test_no_import_cycles_among_product_modules() -> None:
    assert cycles(product_graph()) == []


def test_the_cycle_finder_sees_a_ring_of_three_and_ignores_a_chain() -> None:
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(ring) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_scan_sees_lazy_imports_and_skips_type_checking_ones(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dataflow_mm.pipeline.base import PipelineABC\n"
        "def f():\n    from tests.support.tiny_models import tiny_model_path\n"
    )
    modules = {
        node.module for node in _import_nodes(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert modules == {"typing", "tests.support.tiny_models"}
