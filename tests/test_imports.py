"""The package map and the imports agree: the layers import one way, nothing imports in a ring.

Every import counts: at module level, inside functions, and under ``if TYPE_CHECKING:`` (a type-only
import still ties the two modules' designs together). Product code never imports ``tests.support``;
no module but a package's ``__init__`` declares ``__all__`` (a module re-exporting another's names is an
old import path kept alive); and each folder sits in one layer of ``LAYERS``, importing only from
layers below it, never from a peer folder of its own layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dataflow_mm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
# dataflow_mm/cli is a link to the repository's top-level cli/ folder (installed as dataflow_mm.cli)
MODULES.update({"dataflow_mm.cli" + module_name(p).removeprefix("cli"): p for p in (ROOT / "cli").glob("*.py")})
MODULES = {name.replace(".__init__", ""): path for name, path in MODULES.items()}

# Bottom to top. A folder imports only from the layers below its own (and from itself).
LAYERS: list[tuple[str, ...]] = [
    ("common",),  # errors, logging, optional dependencies, retries, secrets, value checks
    ("storage", "models"),  # step files, tables, media, manifests | model folders, tiny models, devices
    ("imaging",),  # boxes, drawing, crops, image loading
    ("serving", "scoring"),  # VLM backends | matching and similarity models
    ("core",),  # the operator contract: operator, keys, params, calls, step results
    ("operators",),  # the operator families
    ("engine",),  # chunk processing, step executor, streaming, local and Ray runners
    ("report",),  # the HTML report of a run
    ("export", "pipeline"),  # training formats | pipelines, scripts, summaries
    ("cli",),  # the dataflowmm command
    ("",),  # the package root: public names, and it installs the engine
]


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement anywhere in the module (``if TYPE_CHECKING:`` blocks included)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
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


def folder_of(module: str) -> str:
    """The folder (layer member) of a product module: ``dataflow_mm.core.operator`` -> ``core``; the root -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else ""


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Folder -> the other folders its modules import."""
    folders: dict[str, set[str]] = {}
    for name, others in graph.items():
        mine = folder_of(name)
        folders.setdefault(mine, set()).update(folder_of(o) for o in others if folder_of(o) != mine)
    return folders


def layer_of(folder: str) -> int:
    for index, members in enumerate(LAYERS):
        if folder in members:
            return index
    raise AssertionError(f"folder '{folder}' is in no layer of LAYERS: add it where it belongs")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a folder into a higher layer or into a peer folder of its own layer."""
    return sorted(
        f"{name} ({folder_of(name)}) imports {other} ({folder_of(other)})"
        for name, others in graph.items()
        for other in others
        if folder_of(other) != folder_of(name) and layer_of(folder_of(other)) >= layer_of(folder_of(name))
    )


def test_every_folder_imports_only_from_the_layers_below_it() -> None:
    assert layer_violations(product_graph()) == []


def test_the_layer_check_sees_storage_importing_serving_and_peers_importing_each_other() -> None:
    graph = {
        "dataflow_mm.storage.downloads": {"dataflow_mm.serving.api_serving", "dataflow_mm.common.retry"},
        "dataflow_mm.serving.base": {"dataflow_mm.scoring.text_similarity"},
        "dataflow_mm.engine.local_runner": {"dataflow_mm.core.dispatch"},
    }
    assert layer_violations(graph) == [
        "dataflow_mm.serving.base (serving) imports dataflow_mm.scoring.text_similarity (scoring)",
        "dataflow_mm.storage.downloads (storage) imports dataflow_mm.serving.api_serving (serving)",
    ]


def test_no_import_cycles_among_modules() -> None:
    assert cycles(product_graph()) == []


def test_no_import_cycles_among_folders() -> None:
    assert cycles(folder_graph(product_graph())) == []


def test_the_cycle_finder_sees_a_ring_of_three_and_ignores_a_chain() -> None:
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(ring) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_scan_sees_lazy_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dataflow_mm.pipeline.base import PipelineABC\n"
        "def f():\n    from tests.support.fake_serving import FakeVLMServing\n"
    )
    modules = {
        node.module for node in _import_nodes(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert modules == {"typing", "dataflow_mm.pipeline.base", "tests.support.fake_serving"}


def test_only_package_inits_declare_all() -> None:
    """A module's names are imported from the module that defines them: no re-exporting modules."""
    declaring = sorted(
        name
        for name, path in MODULES.items()
        if path.name != "__init__.py"
        and any(
            isinstance(node, ast.Assign | ast.AugAssign)
            and any(isinstance(target, ast.Name) and target.id == "__all__" for target in _targets(node))
            for node in ast.parse(path.read_text(encoding="utf-8")).body
        )
    )
    assert declaring == []


def _targets(node: ast.Assign | ast.AugAssign) -> list[ast.expr]:
    return list(node.targets) if isinstance(node, ast.Assign) else [node.target]
