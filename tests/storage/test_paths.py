"""Where a run may write: the prefix rule and never writing a file the run reads (issue #12 items 2, 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflow_mm.common.errors import StorageError, UserError
from dataflow_mm.storage import FileStorage
from dataflow_mm.storage.paths import check_file_name_prefix, unwritable_reason, write_conflicts


@pytest.mark.parametrize("prefix", ["../escaped", "/abs/prefix", "a/b", "..", ".", "", "x..y", "a\x00b", "a\\b"])
def test_file_storage_refuses_a_prefix_that_is_not_a_file_name_part(tmp_path, prefix):
    with pytest.raises(StorageError, match="file_name_prefix") as info:
        FileStorage(tmp_path / "in.jsonl", cache_path=str(tmp_path / "cache"), file_name_prefix=prefix)
    assert isinstance(info.value, UserError)


@pytest.mark.parametrize("prefix", ["region_caption", "run-2.v1", "dataflow_cache_step"])
def test_plain_prefixes_are_kept(prefix):
    assert check_file_name_prefix(prefix) == prefix


def test_writing_a_file_the_run_reads_is_a_conflict(tmp_path):
    data, step1, step2, extra = (tmp_path / n for n in ("in.jsonl", "s1.jsonl", "s2.jsonl", "extra.jsonl"))
    assert write_conflicts([(1, data, step1, [extra]), (2, step1, step2, [])]) == []
    assert write_conflicts([(1, data, step1, [data])])  # extra output = the input
    assert write_conflicts([(1, data, step1, []), (2, step1, data, [])])  # a later step overwrites the input
    assert write_conflicts([(1, data, step1, [step1])])  # two writes on one file
    link = tmp_path / "link.jsonl"
    data.write_text("{}\n")
    link.symlink_to(data)
    assert write_conflicts([(1, data, step1, [link])])  # the same file under another name


def test_unwritable_reason(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    assert unwritable_reason(tmp_path / "new" / "deeper" / "out.jsonl") is None
    assert "folder" in unwritable_reason(tmp_path)
    assert "not a folder" in unwritable_reason(tmp_path / "file.txt" / "out.jsonl")
    assert unwritable_reason(Path("relative_out.jsonl")) is None
