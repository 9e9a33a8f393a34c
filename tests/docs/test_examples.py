"""Every Python and shell block of README.md and docs/*.md runs, offline, as a reader would run it.

Blocks run in document order in one shared `dataflowmm init` workspace (so a later block may resume
what an earlier one computed), as a reader with the environment activated: `python` and `dataflowmm`
are this interpreter's, the hub is offline and unavailable default models fall back to the tiny ones
(`DATAFLOW_MM_TINY_DIR`). A block's first line may hold one marker:

- ``# not run by the tests: <reason>``: skipped with that reason (its syntax is still checked);
- ``# the tests run this with --smoke_test: <reason>``: every ``python gpu_pipelines/<script>.py`` in it
  gets ``--smoke_test``, so a real model it names is replaced by the tiny one;
- ``# the tests run this in the checkout: <reason>``: runs in the repository root instead (read-only blocks).

Any other block must run as written and exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataflow_mm.cli.main import main as dataflowmm

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
RUN_LANGUAGES = {"python", "bash"}
SHOWN_LANGUAGES = {"json", "text"}  # data and output, never run
NOT_RUN = "# not run by the tests:"
SMOKE = "# the tests run this with --smoke_test:"
IN_CHECKOUT = "# the tests run this in the checkout:"
MARKERS = (NOT_RUN, SMOKE, IN_CHECKOUT)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def marker(self) -> str | None:
        first = self.code.splitlines()[0] if self.code.strip() else ""
        return next((m for m in MARKERS if first.startswith(m)), None)

    @property
    def reason(self) -> str:
        return self.code.splitlines()[0].split(":", 1)[1].strip()


def blocks(languages: set[str] = RUN_LANGUAGES) -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match[1] in languages:
                line = text.count("\n", 0, match.start()) + 1
                found.append(Block(page, line, match[1], match[2]))
    return found


def test_every_fenced_block_says_its_language() -> None:
    """A block in another language (```sh, ```console, none) would escape this test: name one we know."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        languages = FENCE.findall(text)
        unknown = [lang for lang, _ in languages if lang not in RUN_LANGUAGES | SHOWN_LANGUAGES]
        assert not unknown, f"{page.relative_to(REPO)}: blocks in {unknown}; use python, bash, json or text"
        assert text.count("```") == 2 * len(languages), f"{page.relative_to(REPO)}: an unclosed or indented fence"


def test_markers_are_spelled_as_the_test_reads_them() -> None:
    for block in blocks():
        first = block.code.splitlines()[0]
        if "the tests" in first and first.startswith("#"):
            assert block.marker is not None, f"{block.id}: unknown marker {first!r}; use one of {MARKERS}"
            assert block.reason, f"{block.id}: a marker says why"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_qwen_dir: Path, tiny_models_dir: Path) -> Path:
    """One `dataflowmm init` workspace for every block (tiny models built once for the session)."""
    folder = tmp_path_factory.mktemp("docs") / "ws"
    assert dataflowmm(["init", str(folder)]) == 0
    return folder


def _env(tiny_models_dir: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # as after `source .venv/bin/activate`
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DATAFLOW_MM_TINY_DIR": str(tiny_models_dir),
        "PYTHONUNBUFFERED": "1",
    }


def _check_syntax(block: Block, tmp_path: Path) -> None:
    if block.language == "python":
        compile(block.code, block.id, "exec")
    else:
        done = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
        assert done.returncode == 0, f"{block.id}: {done.stderr}"


@pytest.mark.parametrize("block", blocks(), ids=lambda b: b.id)
def test_example_runs(block: Block, workspace: Path, tiny_models_dir: Path, tmp_path: Path) -> None:
    _check_syntax(block, tmp_path)
    if block.marker == NOT_RUN:
        pytest.skip(f"{block.id}: {block.reason}")
    code = block.code
    if block.marker == SMOKE:
        code, count = re.subn(r"(python gpu_pipelines/\w+\.py)", r"\1 --smoke_test", code)
        assert count, f"{block.id}: marked --smoke_test but runs no gpu_pipelines script"
    cwd = REPO if block.marker == IN_CHECKOUT else workspace
    if block.language == "python":
        script = tmp_path / "example.py"
        script.write_text(code, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-c", "set -euo pipefail\n" + code]
    done = subprocess.run(command, cwd=cwd, env=_env(tiny_models_dir), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"{block.id} exited {done.returncode}\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
