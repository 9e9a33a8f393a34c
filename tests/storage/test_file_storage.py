"""FileStorage: step files, formats, atomic writes, rejects of unreadable lines."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dataflow_mm import FileStorage
from dataflow_mm.common.errors import StorageError
from dataflow_mm.storage.formats import iter_table, read_table
from dataflow_mm.storage.table_writer import AtomicTableWriter, write_table

ROWS = [
    {"image": "a.jpg", "bbox": [[1, 2, 3, 4]], "n": 1, "score": 0.5, "text": "héllo"},
    {"image": "b.jpg", "bbox": [], "n": 2, "score": None, "text": "wörld"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_steps_read_the_previous_file_and_write_the_next(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", ROWS)
    storage = FileStorage(str(source), cache_path=str(tmp_path / "cache"), file_name_prefix="demo")

    first = storage.step()
    assert first.input_path == source
    assert first.output_path == tmp_path / "cache" / "demo_step1.jsonl"
    frame = first.read("dataframe")
    first.write(frame.assign(extra=[10, 20]))

    second = storage.step()
    assert second.input_path == tmp_path / "cache" / "demo_step1.jsonl"
    assert second.output_path == tmp_path / "cache" / "demo_step2.jsonl"
    records = second.read("dict")
    assert [r["extra"] for r in records] == [10, 20]
    assert records[0]["bbox"] == [[1, 2, 3, 4]]
    assert first.operator_step == 0 and second.operator_step == 1


@pytest.mark.parametrize("cache_type", ["jsonl", "json", "csv", "parquet"])
def test_every_format_round_trips_values(tmp_path: Path, cache_type: str) -> None:
    path = tmp_path / f"table.{cache_type}"
    write_table(pd.DataFrame(ROWS), path)
    back = read_table(path).frame
    assert list(back["image"]) == ["a.jpg", "b.jpg"]
    assert [list(map(list, b)) for b in back["bbox"]] == [[[1, 2, 3, 4]], []]
    assert list(back["text"]) == ["héllo", "wörld"]
    assert int(back["n"][0]) == 1


def test_integers_stay_integers_through_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}, {"n": None}])
    frame = read_table(path).frame
    write_table(frame, tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_text().splitlines() == ['{"n":1}', '{"n":null}']


def test_bad_jsonl_lines_are_rejected_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"image": "a.jpg"}\n'  # UTF-8 BOM on the first line
        b"\n"  # blank line: skipped, not a row
        b'{"image": "b.jpg"\n'  # malformed
        b'{"image": "\xff\xfe.jpg"}\n'  # not UTF-8
        b"[1, 2]\n"  # not an object
        b'{"image": "c.jpg"}\n'
    )
    chunks = list(iter_table(path, chunk_size=10))
    frame = pd.concat([c.frame for c in chunks])
    rejects = [r for c in chunks for r in c.rejects]
    assert list(frame["image"]) == ["a.jpg", "c.jpg"]
    assert [(r.line, r.cause) for r in rejects] == [
        (3, "MalformedJSONLine"),
        (4, "NonUTF8Line"),
        (5, "NotAnObjectLine"),
    ]


def test_chunks_cover_every_row_once(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(10)])
    sizes = [len(c.frame) for c in iter_table(path, chunk_size=4)]
    assert sizes == [4, 4, 2]


def test_empty_file_yields_no_rows(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    assert read_table(tmp_path / "empty.jsonl").frame.empty


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_input_is_a_clear_storage_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "input.jsonl"
    if make == "directory":
        path.mkdir()
    with pytest.raises(StorageError, match=r"does not exist|is a directory"):
        read_table(path)


def test_a_failed_write_leaves_the_previous_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    write_table(pd.DataFrame([{"a": 1}]), target)
    with pytest.raises(RuntimeError), AtomicTableWriter(target) as writer:
        writer.append(pd.DataFrame([{"a": 2}]))
        raise RuntimeError("crash in the middle of a step")
    assert target.read_text() == '{"a":1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_duplicate_columns_are_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(StorageError, match="duplicate column"):
        write_table(frame, tmp_path / "out.jsonl")


def test_unwritable_cache_fails_fast(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    storage = FileStorage(str(tmp_path / "in.jsonl"), cache_path=str(blocker / "cache"))
    with pytest.raises(StorageError, match="not writable"):
        storage.check_writable()


def test_unknown_cache_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cache_type"):
        FileStorage(str(tmp_path / "in.jsonl"), cache_type="xlsx")  # type: ignore[arg-type]


def test_csv_steps_keep_columns_aligned_when_chunks_differ(tmp_path: Path) -> None:
    """Chunks with different columns share one CSV header (the union), so no value shifts column."""
    from dataflow_mm.storage.parts import ChunkParts

    parts = ChunkParts(tmp_path / "step1.csv", {"fingerprint": "x"})
    parts.open()
    parts.write(0, pd.DataFrame([{"a": 1, "b": "x"}]), [], {"rows_in": 1, "rows_out": 1})
    parts.write(1, pd.DataFrame([{"a": 2, "c": [1, 2]}]), [], {"rows_in": 1, "rows_out": 1})
    parts.assemble("csv")
    back = read_table(tmp_path / "step1.csv").frame
    assert list(back.columns) == ["a", "b", "c"]
    assert back.iloc[1]["c"] == [1, 2] and pd.isna(back.iloc[1]["b"])


def test_a_storage_starting_from_its_own_caches_step_file_continues_the_numbering(tmp_path: Path) -> None:
    """FileStorage(first_entry_file_name=<cache>/<prefix>_step1.jsonl, same cache and prefix) writes step 2,
    never over its own input."""
    cache = tmp_path / "cache"
    follow_up = FileStorage(str(cache / "p_step1.jsonl"), cache_path=str(cache), file_name_prefix="p").step()
    assert follow_up.input_path == cache / "p_step1.jsonl" and follow_up.output_path == cache / "p_step2.jsonl"
    other_prefix = FileStorage(str(cache / "p_step1.jsonl"), cache_path=str(cache), file_name_prefix="q").step()
    assert other_prefix.output_path == cache / "q_step1.jsonl"
