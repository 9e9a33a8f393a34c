"""Dirty inputs through the Img-Diff pipeline (tiny LLaVA-NeXT, BLIP and CLIP): broken images end their row
with the specific error class, bad boxes are dropped with their reason (the row keeps going), unreadable
lines are rejected and counted, and good rows in the same file still get difference captions."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from dataflow_mm import LocalModelVLMServing_hf
from dataflow_mm.common.errors import error_class_of
from dataflow_mm.pipeline.templates import load_pipeline_script
from tests.support.bad_inputs import write_bad_images

REPO = Path(__file__).resolve().parents[2]
GOOD_BOX = [10, 10, 30, 30]

IMAGE_CASES = {  # image_path1 -> expected error class (None: the row is processed)
    "missing.jpg": "ImageNotFoundError",
    "a_directory.jpg": "ImageNotFoundError",
    "zero_byte.jpg": "ImageDecodeError",
    "truncated.jpg": "ImageDecodeError",
    "text_file.jpg": "ImageDecodeError",
    "bomb.png": "ImageTooLargeError",
    "alpha.png": None,
    "palette.png": None,
    "gray.png": None,
    "sixteen_bit.png": None,
    "cmyk.jpg": None,
    "exif_rotated.jpg": None,
    "odd path.jpg": None,
}
BOX_CASES = {  # bboxes (xywh) -> (expected row error, expected reason of the first dropped box or None)
    "fully negative": ([[-100, -100, 50, 50]], None, "entirely outside"),
    "zero width": ([[10, 10, 0, 20]], None, "degenerate"),
    "strings": ([["10", "10", "20", "20"]], None, "string"),
    "too deep": ([[[10, 10, 20, 20]]], None, "nested too deep"),
    "2-value point": ([5, 5], None, "2 values"),
    "one bad among good": ([GOOD_BOX, "oops"], None, "4 numbers"),
    "string cell": ("10,10,20,20", "InvalidBoxError", None),
    "null": (None, None, None),
    "empty list": ([], None, None),
    "all zero": ([[0, 0, 0, 0]], None, None),
}


def load_script() -> ModuleType:
    return load_pipeline_script("imgdiff_pipeline")


@pytest.fixture(scope="module")
def corpus_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_llava_dir: Path, tiny_blip_dir: Path, tiny_clip_dir: Path
) -> tuple:
    folder = tmp_path_factory.mktemp("imgdiff_corpus")
    images = write_bad_images(folder / "images")
    good = str(images["good.jpg"])
    lines = [
        json.dumps({"case_id": f"image1:{name}", "image_path1": str(images[name]), "image_path2": good,
                    "bboxes": [GOOD_BOX]}, ensure_ascii=False)
        for name in IMAGE_CASES
    ]  # fmt: skip
    lines.append(json.dumps({"case_id": "image2:missing.jpg", "image_path1": good,
                             "image_path2": str(images["missing.jpg"]), "bboxes": [GOOD_BOX]}))  # fmt: skip
    for name, (boxes, _, _) in BOX_CASES.items():
        lines.append(json.dumps({"case_id": f"box:{name}", "image_path1": good, "image_path2": good, "bboxes": boxes}))
    lines.append(json.dumps({"case_id": "table:no image_path1", "image_path2": good, "bboxes": [GOOD_BOX]}))
    lines.insert(4, '{"case_id": "malformed", "image_path1": ')
    lines.insert(6, "")
    table = folder / "pairs.jsonl"
    table.write_bytes(("\n".join(lines) + "\n").encode() + b'{"case_id": "latin1", "image_path1": "caf\xe9.jpg"}\n')
    serving = LocalModelVLMServing_hf(str(tiny_llava_dir), max_tokens=4, temperature=0.0, batch_size=32)
    pipeline = load_script().ImgDiffPipeline(
        serving, first_entry_file=str(table), cache_path=str(folder / "cache"), bbox_format="xywh",
        blip_model=str(tiny_blip_dir), similarity_model=str(tiny_clip_dir), itm_min_score=0.0,
        similarity_min_score=-1.0, similarity_max_score=1.0,
    )  # fmt: skip
    summary = pipeline.run()
    pipeline.cleanup()
    rows = {
        r["case_id"]: r for r in map(json.loads, (folder / "cache" / "imgdiff_step5.jsonl").read_text().splitlines())
    }
    return summary, rows


def test_counts_identity_and_rejects(corpus_run: tuple) -> None:
    summary, rows = corpus_run
    assert summary.rows_in == summary.rows_out + summary.rows_rejected
    assert summary.steps[0].rejected == {"MalformedJSONLine": 1, "NonUTF8Line": 1}
    assert summary.rows_out == len(rows) == len(IMAGE_CASES) + len(BOX_CASES) + 2


@pytest.mark.parametrize("name", list(IMAGE_CASES))
def test_image_cases(corpus_run: tuple, name: str) -> None:
    _, rows = corpus_run
    row, expected = rows[f"image1:{name}"], IMAGE_CASES[name]
    if expected:
        assert error_class_of(row["error"]) == expected, row["error"]
        assert str(Path(name).stem) in row["error"] or "a_directory" in row["error"]
    else:
        assert row["error"] is None, row["error"]
        assert len(row["bbox_decisions"]) == 1 and row["bbox_decisions"][0]["kept"]
        assert len(row["bbox_difference_captions"]) == len(row["bboxes"]) == 1
        assert isinstance(row["bbox_difference_captions"][0], str)


def test_a_broken_second_image_fails_its_row_too(corpus_run: tuple) -> None:
    _, rows = corpus_run
    assert error_class_of(rows["image2:missing.jpg"]["error"]) == "ImageNotFoundError"


@pytest.mark.parametrize("name", list(BOX_CASES))
def test_box_cases(corpus_run: tuple, name: str) -> None:
    _, rows = corpus_run
    row = rows[f"box:{name}"]
    _, row_error, reason = BOX_CASES[name]
    if row_error:
        assert error_class_of(row["error"]) == row_error
        return
    assert row["error"] is None, row["error"]
    dropped = [d for d in row["bbox_decisions"] if not d["kept"]]
    if reason:
        assert dropped and dropped[0]["dropped_at"] == "parse" and reason in dropped[0]["drop_reason"]
    kept = [d for d in row["bbox_decisions"] if d["kept"]]
    if kept:
        assert row["bboxes"] == [d["bbox"] for d in kept]
    else:  # the seed's empty result
        assert row["bboxes"] == [[0, 0, 0, 0]] and row["bbox_difference_captions"] == [""]


def test_missing_image_key_is_a_row_error(corpus_run: tuple) -> None:
    _, rows = corpus_run
    assert error_class_of(rows["table:no image_path1"]["error"]) == "MissingFieldError"
