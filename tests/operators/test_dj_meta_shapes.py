"""A ``__dj__meta__`` that is not a dict (a string, a list) is kept as the row had it, and the row gets an
error instead of a made-up dict (issue 24 item 6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dataflow_mm.operators.data_juicer import DataJuicerMetaWriter
from dataflow_mm.operators.imgdiff_area_generator import ImgDiffDifferenceAreaGenerator
from dataflow_mm.operators.imgdiff_dj_meta import DJ_META_KEY
from dataflow_mm.scoring.image_similarity import ClipImageSimilarity
from dataflow_mm.scoring.image_text_matching import BlipITMScorer
from dataflow_mm.scoring.object_detection import OwlDetector
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.testing.imgdiff_pairs import write_captioned_pairs

NOT_DICTS = ["free text, not JSON", ["a", "list"], 7, '["json", "but a list"]']


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def writer_frame(metas: list[Any]) -> pd.DataFrame:
    n = len(metas)
    return pd.DataFrame(
        {
            DJ_META_KEY: metas,
            "bboxes": [[[10, 10, 4, 4]]] * n,
            "region_caption1": [["a cat"]] * n,
            "region_caption2": [["a dog"]] * n,
            "bbox_difference_captions": [["cat became dog"]] * n,
            "bbox_decisions": [[{"kept": True}]] * n,
        },
        dtype=object,
    )


def test_the_meta_writer_keeps_a_non_dict_meta_and_marks_the_row() -> None:
    metas = [*NOT_DICTS, {"tag": "kept"}, '{"tag": "json text"}', None]
    out = DataJuicerMetaWriter().process_chunk(writer_frame(metas))
    values, errors = out[DJ_META_KEY].tolist(), out["error"].tolist()
    for position, meta in enumerate(NOT_DICTS):
        assert values[position] == meta
        assert errors[position].startswith("DJMetaError:") and "__dj__meta__ must be a dict" in errors[position]
    dict_row, json_row, empty_row = values[len(NOT_DICTS) :]
    assert dict_row["tag"] == "kept" and dict_row["__dj__bbox__"] == [[10, 10, 4, 4]]
    assert json_row["tag"] == "json text" and json_row["__dj__bbox__"] == [[10, 10, 4, 4]]  # parsed, not dropped
    assert empty_row["__dj__bbox__"] == [[10, 10, 4, 4]]
    assert all(pd.isna(e) for e in errors[len(NOT_DICTS) :])


@pytest.mark.slow
def test_the_area_generator_keeps_a_non_dict_meta_and_marks_the_row(
    tmp_path: Path, tiny_clip_dir: Path, tiny_owlv2_dir: Path, tiny_blip_dir: Path
) -> None:
    table = write_captioned_pairs(tmp_path / "pairs", 3, dj_meta=True)
    rows = read_rows(table)
    rows[0][DJ_META_KEY] = "free text, not JSON"
    rows[1][DJ_META_KEY] = ["a", "list"]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    generator = ImgDiffDifferenceAreaGenerator(
        {"min_score_1": -1.0, "min_score_2": -1.0},
        {"conf": 0.0},
        {"min_score": 0.0},
        image_similarity=ClipImageSimilarity(tiny_clip_dir, device="cpu"),
        detector=OwlDetector(tiny_owlv2_dir, device="cpu", threshold=0.0),
        itm_scorer=BlipITMScorer(tiny_blip_dir, device="cpu"),
        bbox_format="xyxy",
    )
    storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"), file_name_prefix="area")
    generator.run(storage=storage.step())
    out = read_rows(tmp_path / "cache" / "area_step1.jsonl")
    assert [r[DJ_META_KEY] for r in out[:2]] == ["free text, not JSON", ["a", "list"]]
    assert all(r["error"].startswith("DJMetaError:") for r in out[:2])
    assert out[2]["error"] is None and isinstance(out[2][DJ_META_KEY], dict)
