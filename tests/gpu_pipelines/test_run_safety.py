"""Attacks on a run's files through the pipeline scripts (issue #12 items 1, 2, 4, 12).

Every run uses ``--backend api`` against the local fake endpoint, so no model loads: two runs on
one cache, a run pointed at its own input, a prefix escaping the cache, flags that cannot work,
unreadable inputs and a disk that fills up while a step is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataflow_mm.storage.lock import lock_file_of
from tests.support.openai_test_server import OpenAITestServer
from tests.support.script_runs import assert_one_line_exit_2, run_script, script_env, write_photo_rows

pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
REGION_SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
IMGDIFF_SCRIPT = REPO / "gpu_pipelines" / "imgdiff_pipeline.py"
IMAGES = REPO / "data" / "image_region_caption"


def command(server_url: str, first_entry: Path, cache: Path, *extra: str, script: Path = REGION_SCRIPT) -> list[str]:
    return [
        sys.executable, str(script),
        "--backend", "api", "--api_url", server_url, "--model_name", "test-model",
        "--first_entry_file", str(first_entry), "--cache_path", str(cache), "--file_name_prefix", "rc",
        *extra,
    ]  # fmt: skip


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# -- item 1: one run per cache ----------------------------------------------------------------------


def start_first_run(server: OpenAITestServer, cmd: list[str]) -> subprocess.Popen[str]:
    """Start a run and return once it is sending requests (i.e. well inside its steps)."""
    first = subprocess.Popen(cmd, cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: server.requests or first.poll() is not None)
    assert first.poll() is None, first.communicate()[1][-3000:]
    return first


def test_a_second_run_on_the_same_cache_stops_with_exit_2_naming_the_first(tmp_path):
    rows_in = 40
    first_entry = write_photo_rows(tmp_path / "in.jsonl", rows_in)
    cache = tmp_path / "cache"
    with OpenAITestServer(delay=0.25) as server:  # the first run needs 10 s: the second starts well within
        cmd = command(server.base_url, first_entry, cache, "--max_workers", "1", "--chunk_size", "5")
        first = start_first_run(server, cmd)
        try:
            second = run_script(cmd)
        finally:
            _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    message = assert_one_line_exit_2(second)
    assert f"pid {first.pid}" in message and str(cache) in message
    assert lock_file_of(cache).exists()
    rows = jsonl_rows(cache / "rc_step3.jsonl")
    assert len(rows) == rows_in and sorted(r["id"] for r in rows) == list(range(rows_in))
    assert all(r["error"] is None for r in rows)
    assert json.loads((cache / "rc_step2.jsonl.manifest.json").read_text())["stats"]["rows_out"] == rows_in


def test_wait_for_lock_queues_the_second_run_and_both_succeed(tmp_path):
    rows_in = 20
    first_entry = write_photo_rows(tmp_path / "in.jsonl", rows_in)
    cache = tmp_path / "cache"
    with OpenAITestServer(delay=0.25) as server:
        cmd = command(server.base_url, first_entry, cache, "--max_workers", "1", "--chunk_size", "5")
        first = start_first_run(server, cmd)
        try:
            second = run_script([*cmd, "--wait_for_lock"])
        finally:
            _, err = first.communicate(timeout=120)
        requests = len(server.requests)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"pid {first.pid}" in second.stderr  # it said whom it waited for
    assert "already complete, skipped" in second.stdout  # it ran after the first, not beside it
    assert requests == rows_in
    rows = jsonl_rows(cache / "rc_step3.jsonl")
    assert sorted(r["id"] for r in rows) == list(range(rows_in))


# -- item 2: never write a file the run reads -------------------------------------------------------


def test_extra_output_equal_to_the_input_is_refused_and_the_input_kept(tmp_path):
    first_entry = write_photo_rows(tmp_path / "in.jsonl", 3)
    before = first_entry.read_bytes()
    with OpenAITestServer() as server:
        proc = run_script(
            command(server.base_url, first_entry, tmp_path / "cache", "--output_image_with_bbox_path", str(first_entry))
        )
        assert not server.requests
    message = assert_one_line_exit_2(proc)
    assert "never writes a file it reads" in message
    assert first_entry.read_bytes() == before
    assert not (tmp_path / "cache" / "rc_step1.jsonl").exists()


def test_an_input_that_is_a_step_file_of_the_same_cache_and_prefix_is_never_written(tmp_path):
    """Step files are never shared: a storage whose first file is step 2 of its own cache and prefix
    continues the numbering (steps 3 and 4), so the input stays as it was."""
    cache = tmp_path / "cache"
    first_entry = write_photo_rows(cache / "rc_step2.jsonl", 3)
    before = first_entry.read_bytes()
    with OpenAITestServer() as server:
        proc = run_script(command(server.base_url, first_entry, cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert first_entry.read_bytes() == before
    assert not (cache / "rc_step1.jsonl").exists()
    assert len((cache / "rc_step4.jsonl").read_text().splitlines()) == 3


# -- item 4: the prefix is a file-name part ---------------------------------------------------------


@pytest.mark.parametrize("prefix", ["../escaped", "sub/dir", "ABSOLUTE", ".."])
def test_a_prefix_that_leaves_the_cache_is_refused(tmp_path, prefix):
    prefix = str(tmp_path / "abs" / "escaped") if prefix == "ABSOLUTE" else prefix
    first_entry = write_photo_rows(tmp_path / "in.jsonl", 2)
    cache = tmp_path / "work" / "cache"
    with OpenAITestServer() as server:
        cmd = command(server.base_url, first_entry, cache)
        cmd[cmd.index("--file_name_prefix") + 1] = prefix
        proc = run_script(cmd)
        assert not server.requests
    assert "file_name_prefix" in assert_one_line_exit_2(proc)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [Path("in.jsonl")]


# -- item 12: run-level problems: one line, exit 2 --------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--max_boxes", "0"],
        ["--batch_size", "0"],
        ["--api_max_retries", "-1"],
        ["--max_tokens", "0"],
        ["--temperature", "-0.5"],
        ["--chunk_size", "0"],
        ["--api_timeout", "0"],
        ["--api_max_response_mb", "0"],
        ["--output_image_with_bbox_path", "NOT_A_FOLDER/out.jsonl"],
        ["--output_image_with_bbox_path", "A_FOLDER"],
    ],
)
def test_flags_that_cannot_work_stop_before_any_step(tmp_path, flags):
    first_entry = write_photo_rows(tmp_path / "in.jsonl", 2)
    (tmp_path / "file.txt").write_text("a file, not a folder")
    (tmp_path / "folder").mkdir()
    flags = [
        f.replace("NOT_A_FOLDER", str(tmp_path / "file.txt")).replace("A_FOLDER", str(tmp_path / "folder"))
        for f in flags
    ]
    with OpenAITestServer() as server:
        proc = run_script(command(server.base_url, first_entry, tmp_path / "cache", *flags))
        assert not server.requests
    assert flags[0] in assert_one_line_exit_2(proc)
    assert not (tmp_path / "cache").exists()  # checked when parsed: no step ran, nothing was created


@pytest.mark.parametrize("flags", [["--max_tokens", "0"], ["--max_proposals", "0"], ["--temperature", "-1"]])
def test_imgdiff_flags_that_cannot_work_stop_before_any_step(tmp_path, flags):
    first_entry = tmp_path / "pairs.jsonl"
    first_entry.write_text(json.dumps({"image_path1": "a.jpg", "image_path2": "b.jpg"}) + "\n")
    proc = run_script(command("http://127.0.0.1:9/v1", first_entry, tmp_path / "cache", *flags, script=IMGDIFF_SCRIPT))
    assert flags[0] in assert_one_line_exit_2(proc)
    assert not (tmp_path / "cache").exists()


def test_corrupt_or_non_parquet_input_is_one_line_exit_2(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"image": [str(IMAGES / "street.jpg")] * 50, "id": list(range(50))}), good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_parquet = tmp_path / "table.parquet"
    not_parquet.write_text('{"image": "a.jpg"}\n')
    for first_entry in (truncated, not_parquet):
        proc = run_script(command("http://127.0.0.1:9/v1", first_entry, tmp_path / "cache"))
        assert "Parquet" in assert_one_line_exit_2(proc)


def test_a_non_utf8_byte_in_a_csv_is_one_line_exit_2(tmp_path):
    for name, text in [("header.csv", b"im\xffage,id\na.jpg,1\n"), ("row.csv", b"image,id\n/p/\xff\xfe.jpg,1\n")]:
        first_entry = tmp_path / name
        first_entry.write_bytes(text)
        proc = run_script(command("http://127.0.0.1:9/v1", first_entry, tmp_path / "cache"))
        assert "CSV" in assert_one_line_exit_2(proc)


# The step-1 writes fail as on a full disk: the temp file is written, then committing it fails.
DISK_FULL = """
import errno, os, runpy, sys
real_replace, real_rename = os.replace, os.rename
def full(real):
    def commit(src, dst, *args, **kwargs):
        if "_step1" in os.fspath(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(src))
        return real(src, dst, *args, **kwargs)
    return commit
os.replace, os.rename = full(real_replace), full(real_rename)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_disk_full_while_writing_a_step_is_one_line_exit_2_and_the_step_not_complete(tmp_path):
    first_entry = write_photo_rows(tmp_path / "in.jsonl", 4)
    cache = tmp_path / "cache"
    with OpenAITestServer() as server:
        cmd = command(server.base_url, first_entry, cache)
        proc = run_script([cmd[0], "-c", DISK_FULL, *cmd[1:]])
        message = assert_one_line_exit_2(proc)
        assert "No space left on device" in message
        assert not (cache / "rc_step1.jsonl").exists()
        assert not (cache / "rc_step1.jsonl.manifest.json").exists()
        again = run_script(cmd)  # the disk has room again: the same command completes
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(jsonl_rows(cache / "rc_step3.jsonl")) == 4
