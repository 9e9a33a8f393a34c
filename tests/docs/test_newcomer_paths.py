"""What a newcomer types works as printed: the quick start's next steps and `dataflowmm init`'s next command,
in a shell where the environment is NOT activated (only the printed lines may bring it in)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataflow_mm.cli.main import _python_command

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _without_venv_path() -> str:
    """PATH as in a fresh shell: the test interpreter's bin folder removed."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != BIN)


def test_init_prints_python_only_when_python_is_this_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(BIN) + os.pathsep + _without_venv_path())
    if not (BIN / "python").exists():
        pytest.skip(f"{BIN} has no 'python'")  # a venv always has one
    assert _python_command() == "python"
    monkeypatch.setenv("PATH", _without_venv_path())
    assert _python_command() == os.path.abspath(sys.executable)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout whose .venv is the test environment; set-up (pip installs) is the one part left out."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "quickstart.sh", root / "scripts")
    (root / "scripts" / "setup_env.sh").write_text('echo "[setup] (the test environment)"\n')
    (root / "gpu_pipelines").symlink_to(REPO / "gpu_pipelines")
    (root / ".venv").symlink_to(Path(sys.prefix))
    for needed in ("python", "dataflowmm", "activate"):
        if not (root / ".venv" / "bin" / needed).exists():
            pytest.skip(f"the test environment {sys.prefix} is not a venv with bin/{needed}")
    return root


def test_quickstart_next_steps_work_as_printed(
    checkout: Path, tmp_path: Path, tiny_qwen_dir: Path, tiny_models_dir: Path
) -> None:
    env = {
        **os.environ,
        "PATH": _without_venv_path(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "DATAFLOW_MM_TINY_DIR": str(tiny_models_dir),
        "WORKSPACE": str(tmp_path / "demo run"),  # a space: printed paths must be quoted
    }
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["bash", str(checkout / "scripts" / "quickstart.sh"), "--chunk_size", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "[quickstart] done." in out, out
    steps = [line.strip() for line in out.split("[quickstart] done.", 1)[1].splitlines()[1:] if line.startswith("  ")]
    assert steps[0].startswith("source ") and steps[0].endswith("/.venv/bin/activate"), steps
    assert any(step.startswith("dataflowmm export") for step in steps), steps
    init_next = next(line for line in out.splitlines() if line.startswith("next: "))[len("next: ") :]

    # dataflowmm init's own next command, as printed, from the folder quickstart ran it in (the checkout):
    # the same run again, so every step is found complete
    again = subprocess.run(["bash", "-c", init_next], cwd=checkout, env=env, capture_output=True, text=True)
    assert again.returncode == 0, f"{init_next}\n{again.stderr}"
    skipped = {line.split()[1] for line in again.stdout.splitlines() if "already complete, skipped" in line}
    assert skipped == {"1", "2", "3"}, again.stdout

    ran = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, f"{steps}\n{ran.stdout}\n{ran.stderr}"
    workspace = tmp_path / "demo run"
    summary = json.loads((workspace / "export" / "sharegpt" / "export_summary.json").read_text())
    assert summary["samples"] == summary["rows_in"] == 4  # every demo image: the structured answers parse
    assert (workspace / "cache" / "image_region_caption" / "report.html").is_file()
