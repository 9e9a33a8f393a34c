"""The Img-Diff pipeline on a Data-Juicer table: boxes from ``__dj__meta__.__dj__bbox__`` (not proposed
over them), results written back into the meta column as well as the flat columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflow_mm.imaging.bbox import from_xyxy
from dataflow_mm.pipeline.templates import load_pipeline_script
from tests.support.fake_serving import FakeVLMServing
from tests.support.imgdiff_pairs import edited_pair
from tests.support.sample_data import write_jsonl

DJ_RESULT = {"region_caption1", "region_caption2", "__dj__bbox__", "bbox_difference_captions"}

pytestmark = pytest.mark.slow


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def data_juicer_table(folder: Path) -> tuple[Path, list[list[list[float]]]]:
    """Rows as Data-Juicer's imgdiff_difference_area_generator_mapper leaves them (pixel cx, cy, w, h)."""
    rows, boxes_per_row = [], []
    for index in range(3):
        first, second, boxes, _ = edited_pair((160, 120), 3, seed=index)
        path1, path2 = folder / f"{index}_1.jpg", folder / f"{index}_2.jpg"
        first.save(path1)
        second.save(path2)
        dj_boxes = [[round(v, 1) for v in from_xyxy(b, "cxcywh", (160, 120))] for b in boxes[:2]]
        boxes_per_row.append(dj_boxes)
        meta = {"__dj__bbox__": dj_boxes if index < 2 else [], "source": f"shard-{index}"}
        rows.append({"image_path1": str(path1), "image_path2": str(path2), "text": "", "__dj__meta__": meta})
    return write_jsonl(folder / "dj.jsonl", rows), boxes_per_row


@pytest.fixture
def options(tiny_blip_dir: Path, tiny_clip_dir: Path) -> dict:
    return dict(blip_model=str(tiny_blip_dir), similarity_model=str(tiny_clip_dir), itm_min_score=0.0,
                similarity_min_score=-1.0, allow_tiny_fallback=False)  # fmt: skip


@pytest.mark.parametrize("variant", ["steps", "fused", "no_propose"])
def test_data_juicer_boxes_are_used_and_results_written_back(tmp_path: Path, options: dict, variant: str) -> None:
    table, dj_boxes = data_juicer_table(tmp_path)
    pipeline = load_pipeline_script("imgdiff_pipeline").ImgDiffPipeline(
        FakeVLMServing(), first_entry_file=str(table), cache_path=str(tmp_path / "cache"),
        fused=variant == "fused", propose_missing_boxes=variant != "no_propose", **options,
    )  # fmt: skip
    summary = pipeline.run()
    assert summary.steps[-1].operator == "DataJuicerMetaWriter"  # automatic: the input uses the format
    rows = read_rows(Path(summary.steps[-1].output_path))
    assert len(rows) == 3
    for row, boxes in zip(rows[:2], dj_boxes[:2], strict=True):
        assert row["error"] is None
        assert [d["bbox"] for d in row["bbox_decisions"]] == boxes  # Data-Juicer's boxes, not proposals
        meta = row["__dj__meta__"]
        assert meta["source"] == row["__dj__meta__"]["source"] and meta.keys() >= DJ_RESULT
        kept = [d for d in row["bbox_decisions"] if d["kept"]]
        assert meta["__dj__bbox__"] == [d["bbox"] for d in kept]
        assert len(meta["region_caption1"]) == len(meta["bbox_difference_captions"]) == len(kept)
        assert row["bboxes"] == (meta["__dj__bbox__"] or [[0, 0, 0, 0]])  # the flat columns as well
    if variant == "no_propose":  # no candidate box and none proposed: Data-Juicer's "no difference" (empty lists)
        assert rows[2]["bbox_decisions"] == [] and rows[2]["__dj__meta__"]["source"] == "shard-2"
        assert all(rows[2]["__dj__meta__"][k] == [] for k in DJ_RESULT)
    else:
        assert rows[2]["bbox_source"] == "proposed" and rows[2]["error"] is None
        assert rows[2]["__dj__meta__"].keys() >= DJ_RESULT | {"source"}
    if variant == "steps":
        assert [r["bbox_source"] for r in rows] == ["input", "input", "proposed"]


def test_output_format_flat_and_dj_on_request(tmp_path: Path, options: dict) -> None:
    table, _ = data_juicer_table(tmp_path)
    script = load_pipeline_script("imgdiff_pipeline")
    flat = script.ImgDiffPipeline(FakeVLMServing(), first_entry_file=str(table), cache_path=str(tmp_path / "c1"),
                                  output_format="flat", **options).run()  # fmt: skip
    assert flat.steps[-1].operator == "ImgDiffDifferenceCaptioner"
    assert all("region_caption1" not in r["__dj__meta__"] for r in read_rows(Path(flat.steps[-1].output_path)))
    plain = write_jsonl(tmp_path / "plain.jsonl", [{k: v for k, v in r.items() if k != "__dj__meta__"}
                                                   for r in read_rows(table)])  # fmt: skip
    dj = script.ImgDiffPipeline(FakeVLMServing(), first_entry_file=str(plain), cache_path=str(tmp_path / "c2"),
                                output_format="dj", **options).run()  # fmt: skip
    assert all(r["__dj__meta__"].keys() == DJ_RESULT for r in read_rows(Path(dj.steps[-1].output_path)))
    with pytest.raises(SystemExit):
        script.parse_args(["--output_format", "yaml"])
    assert script.parse_args(["--output_format", "dj"]).output_format == "dj"
