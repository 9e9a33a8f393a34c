"""`dataflowmm init`: copies scripts and demo data, never prompts, works from an installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dataflow_mm.cli.main import main
from dataflow_mm.cli.scaffold import template_files

REPO = Path(__file__).resolve().parents[2]
PIPELINE = Path("gpu_pipelines/image_region_caption_pipeline.py")
DEMO_TABLE = Path("data/image_region_caption/image_region_caption_demo.jsonl")


def test_init_into_an_empty_directory_copies_everything(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["init", str(tmp_path / "ws")]) == 0
    for relative in template_files():
        assert (tmp_path / "ws" / relative).is_file()
    assert (tmp_path / "ws" / PIPELINE).read_text() == (REPO / PIPELINE).read_text()
    assert (tmp_path / "ws" / DEMO_TABLE).is_file()
    assert "0 skipped" in capsys.readouterr().out


def test_init_into_a_non_empty_directory_skips_and_lists_existing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / PIPELINE).parent.mkdir(parents=True)
    (tmp_path / PIPELINE).write_text("# my edited pipeline\n")
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["init", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"skipped (exists, use --force to overwrite): {tmp_path / PIPELINE}" in out
    assert (tmp_path / PIPELINE).read_text() == "# my edited pipeline\n"
    assert (tmp_path / DEMO_TABLE).is_file()
    assert (tmp_path / "notes.txt").read_text() == "mine"

    assert main(["init", str(tmp_path), "--force"]) == 0
    assert (tmp_path / PIPELINE).read_text() == (REPO / PIPELINE).read_text()


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["init", str(tmp_path / "ws"), "--dry-run"]) == 0
    assert not (tmp_path / "ws").exists()
    assert f"would create: {tmp_path / 'ws' / PIPELINE}" in capsys.readouterr().out


def test_init_defaults_to_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert (tmp_path / PIPELINE).is_file()


def test_init_works_from_an_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it alone into a folder, and run `init` from there (not from the checkout)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("dataflow_mm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # one top-level package (cli/ installs as dataflow_mm.cli), and no test code in the product
    assert {name.split("/")[0] for name in names} == {"dataflow_mm", wheel.name.split("-py")[0] + ".dist-info"}
    assert "dataflow_mm/cli/main.py" in names
    assert not [name for name in names if "/testing/" in name or "/support/" in name or "/tests/" in name]
    entry_points = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/entry_points.txt").decode()
    assert "dataflowmm = dataflow_mm.cli.main:main" in entry_points
    assert f"dataflow_mm/_templates/{PIPELINE.as_posix()}" in names
    assert f"dataflow_mm/_templates/{DEMO_TABLE.as_posix()}" in names
    assert {"dataflow_mm/report/assets/report.js", "dataflow_mm/report/assets/report.css"} <= set(names)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(tmp_path / "site"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run(
        [sys.executable, "-m", "dataflow_mm.cli.main", "init", str(tmp_path / "ws")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import dataflow_mm; print(dataflow_mm.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.startswith(str(tmp_path / "site"))
    assert (tmp_path / "ws" / PIPELINE).read_text() == (REPO / PIPELINE).read_text()
    assert (tmp_path / "ws" / DEMO_TABLE).is_file()
