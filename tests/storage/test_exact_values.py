"""Every step-file format gives back exactly the values written: extreme floats, big ints,
booleans, nulls, nested lists, and (Parquet) a column mixing numbers and text."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dataflow_mm.storage.arrow_exact import JSON_COLUMNS_KEY
from dataflow_mm.storage.formats import read_table
from dataflow_mm.storage.table_types import SUPPORTED_TYPES
from dataflow_mm.storage.table_writer import write_table

FLOATS = [1e-12, 0.123456789012345, 1e308, -0.0, 5e-324, 2.5]
BIG = 2**53 + 1


def rows() -> list[dict]:
    return [
        {"f": FLOATS[0], "i": BIG, "b": True, "n": None, "nested": [[1, 2.5], ["a", None]], "s": "3"},
        {"f": FLOATS[1], "i": -BIG, "b": False, "n": None, "nested": [], "s": "a/b"},
        {"f": FLOATS[2], "i": 2**63 - 1, "b": True, "n": None, "nested": [[0.1]], "s": "true"},
        {"f": FLOATS[3], "i": 0, "b": False, "n": None, "nested": [{"k": 1e-12}], "s": ""},
        {"f": FLOATS[4], "i": 7, "b": True, "n": None, "nested": [[1], [2, 3]], "s": "[1, 2]"},
        {"f": FLOATS[5], "i": -1, "b": False, "n": None, "nested": [None], "s": 'say "hi"'},
    ]


def same(a: object, b: object) -> bool:
    """Equal with types: 1 is not 1.0 nor True, -0.0 is not 0.0."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and math.copysign(1, a) == math.copysign(1, b) and (a == b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("table_type", SUPPORTED_TYPES)
def test_extreme_values_round_trip_exactly_in_every_format(tmp_path: Path, table_type: str) -> None:
    path = tmp_path / f"step.{table_type}"
    write_table(pd.DataFrame(rows(), dtype=object), path, table_type)
    back = read_table(path, table_type).frame.to_dict(orient="records")
    assert len(back) == len(rows())
    for want, got in zip(rows(), back, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            value = got[key]
            if want[key] is None:  # a null may come back as None (or NaN from a typed column)
                assert value is None or (isinstance(value, float) and math.isnan(value)), (key, value)
            else:
                assert same(want[key], value), (table_type, key, want[key], value)


@pytest.mark.parametrize("table_type", ["jsonl", "json"])
def test_json_text_has_no_escaped_slashes_and_numpy_pandas_values_are_written(tmp_path: Path, table_type: str) -> None:
    frame = pd.DataFrame(
        {
            "path": ["/data/images/a.jpg"],
            "np_int": [np.int64(2**62)],
            "np_float": [np.float32(0.5)],
            "array": [np.array([1.5, 2.0])],
            "when": [pd.Timestamp("2024-05-01T12:30:00")],
            "missing": [pd.NA],
        },
        dtype=object,
    )
    path = tmp_path / f"step.{table_type}"
    write_table(frame, path, table_type)
    text = path.read_text(encoding="utf-8")
    assert "\\/" not in text and "/data/images/a.jpg" in text
    row = read_table(path, table_type).frame.iloc[0].to_dict()
    assert row["np_int"] == 2**62 and row["np_float"] == 0.5 and row["array"] == [1.5, 2.0]
    assert row["when"].startswith("2024-05-01T12:30:00") and row["missing"] is None


def test_json_reader_still_rejects_a_duplicate_key_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n{"a": 1, "a": 2}\n', encoding="utf-8")
    chunk = read_table(path)
    assert len(chunk.frame) == 1 and [r.cause for r in chunk.rejects] == ["DuplicateKeyLine"]


def test_parquet_column_with_an_int_in_one_row_and_text_in_another_is_written_as_json_text(tmp_path: Path) -> None:
    """#12.10: ``--cache_type parquet`` with a mixed column wrote nothing (pyarrow refused it)."""
    path = tmp_path / "step.parquet"
    frame = pd.DataFrame({"label": [1, "text", None], "score": [1, 2.5, 3], "ok": ["a", "b", "c"]}, dtype=object)
    write_table(frame, path)
    metadata = pq.ParquetFile(path).schema_arrow.metadata
    assert sorted(__import__("json").loads(metadata[JSON_COLUMNS_KEY])) == ["label", "score"]
    assert pq.read_schema(path).field("ok").type == "string"
    back = read_table(path).frame
    assert back["label"].tolist() == [1, "text", None] and type(back["label"][0]) is int
    assert [type(v) for v in back["score"]] == [int, float, int]


def test_csv_of_a_user_keeps_text_that_is_not_json_and_reads_json_cells_as_values(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,zip,flag,caption,boxes\n3,01234,true,a red car,"[[1, 2, 3, 4]]"\n', encoding="utf-8")
    row = read_table(path).frame.iloc[0].to_dict()
    assert row == {"id": 3, "zip": "01234", "flag": True, "caption": "a red car", "boxes": [[1, 2, 3, 4]]}


def test_jsonl_of_a_pipeline_step_round_trips_through_a_subprocess_reader(tmp_path: Path) -> None:
    """The file is plain JSON any stdlib reader loads to the same floats (no pandas involved)."""
    path = tmp_path / "step.jsonl"
    write_table(pd.DataFrame({"f": FLOATS}, dtype=object), path)
    code = f"import json,sys; print([json.loads(l)['f'] for l in open(sys.argv[1])] == {FLOATS!r})"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_csv_text_that_looks_like_a_number_or_nan_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "step.csv"
    texts = ["3", "true", "null", "NaN", "-Infinity", "[1, 2]", "", "007", '{"a": 1}']
    write_table(pd.DataFrame({"t": texts}, dtype=object), path)
    assert read_table(path).frame["t"].tolist() == texts
    (tmp_path / "user.csv").write_text("a\nNaN\n", encoding="utf-8")
    assert read_table(tmp_path / "user.csv").frame["a"].tolist() == ["NaN"]


def test_a_parquet_cache_step_is_written_when_a_column_mixes_int_and_text(tmp_path: Path) -> None:
    """#12.10 end to end: ``cache_type="parquet"`` and a ``label`` that is ``1`` in one row, text in another."""
    import json

    from dataflow_mm import FileStorage
    from dataflow_mm.operators.region_caption.image_bbox_generator import ImageBboxGenerator
    from tests.support.sample_data import write_region_caption_table

    table = write_region_caption_table(tmp_path / "imgs", n_rows=2, size=(48, 40), n_boxes=1)
    rows = [json.loads(line) for line in Path(table).read_text().splitlines()]
    rows[0]["label"], rows[1]["label"] = 1, "text"
    Path(table).write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"), file_name_prefix="p", cache_type="parquet")
    ImageBboxGenerator().run(storage.step())
    back = read_table(tmp_path / "cache" / "p_step1.parquet").frame
    assert back["label"].tolist() == [1, "text"] and back["valid_bboxes_num"].tolist() == [1, 1]
