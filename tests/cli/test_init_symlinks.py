"""`dataflowmm init` never writes through a symbolic link in the target (issue 24 item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from cli.scaffold import template_files

REPO = Path(__file__).resolve().parents[2]
PIPELINE = Path("gpu_pipelines/image_region_caption_pipeline.py")


def test_a_dangling_link_creates_no_file_outside_the_target(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ws, outside = tmp_path / "ws", tmp_path / "outside" / "planted.py"
    (ws / PIPELINE.parent).mkdir(parents=True)
    outside.parent.mkdir()
    (ws / PIPELINE).symlink_to(outside)
    assert main(["init", str(ws)]) == 0
    assert not outside.exists()
    assert (ws / PIPELINE).is_symlink()
    assert "symbolic link" in capsys.readouterr().out


def test_force_replaces_the_link_and_leaves_its_target_alone(tmp_path: Path) -> None:
    ws, victim = tmp_path / "ws", tmp_path / "bashrc"
    victim.write_text("mine\n")
    (ws / PIPELINE.parent).mkdir(parents=True)
    (ws / PIPELINE).symlink_to(victim)
    assert main(["init", str(ws), "--force"]) == 0
    assert victim.read_text() == "mine\n"
    assert not (ws / PIPELINE).is_symlink()
    assert (ws / PIPELINE).read_bytes() == (REPO / PIPELINE).read_bytes()


def test_a_linked_folder_on_the_way_is_not_followed(tmp_path: Path) -> None:
    ws, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    elsewhere.mkdir()
    ws.mkdir()
    (ws / "data").symlink_to(elsewhere, target_is_directory=True)
    assert main(["init", str(ws)]) == 0
    assert list(elsewhere.iterdir()) == []
    assert main(["init", str(ws), "--force"]) == 0
    assert list(elsewhere.iterdir()) == []
    assert (ws / "data").is_dir() and not (ws / "data").is_symlink()
    for relative in template_files():
        assert (ws / relative).is_file() and not (ws / relative).is_symlink()


def test_dry_run_with_force_touches_no_link(tmp_path: Path) -> None:
    ws, victim = tmp_path / "ws", tmp_path / "victim"
    victim.write_text("x")
    (ws / PIPELINE.parent).mkdir(parents=True)
    (ws / PIPELINE).symlink_to(victim)
    assert main(["init", str(ws), "--force", "--dry-run"]) == 0
    assert (ws / PIPELINE).is_symlink() and victim.read_text() == "x"
