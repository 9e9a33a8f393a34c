"""The figures docs/architecture.md quotes: import cycles, the largest modules, files per folder, README size.

    python scripts/structure_figures.py        (from the repository root, with the project's .venv)

It reads the code as text (the same import scan as tests/test_imports.py); nothing is imported or run.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_imports import MODULES, cycles, folder_graph, folder_of, product_graph  # noqa: E402


def main() -> None:
    graph = product_graph()
    folder_cycles = len(cycles(folder_graph(graph)))
    print(f"import cycles: {len(cycles(graph))} among {len(graph)} modules, {folder_cycles} among folders")
    sizes = sorted(((len(p.read_text(encoding="utf-8").splitlines()), n) for n, p in MODULES.items()), reverse=True)
    print("largest modules (lines): " + ", ".join(f"{name} {lines}" for lines, name in sizes[:3]))
    per_folder = Counter(folder_of(name) or "(root)" for name in MODULES)
    print("files per folder: " + ", ".join(f"{folder} {count}" for folder, count in sorted(per_folder.items())))
    readme = ROOT / "README.md"
    print(f"README.md: {len(readme.read_text(encoding='utf-8').splitlines())} lines, {readme.stat().st_size} bytes")
    docs = sorted((ROOT / "docs").glob("*.md"))
    print(f"docs/: {len(docs)} pages, {sum(len(p.read_text(encoding='utf-8').splitlines()) for p in docs)} lines")


if __name__ == "__main__":
    main()
