"""A structured answer cut at the token limit, or not the JSON asked for, yields no captions (issue 24, 18).

Against ``vllm serve`` with default settings the model pads its JSON with whitespace; at a small
``--max_tokens`` answers stopped at the limit as invalid JSON, and the free-text fallback turned them
into captions such as ``"region1" : "k leftere dowgor" ,``, counted as parsed and exported. The fake
OpenAI server answers the run's three requests with a complete object, one cut at ``max_tokens``
and one missing a region.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from dataflow_mm.operators.region_caption.caption_parser import structured_answer_overhead
from tests.support.openai_test_server import OpenAITestServer

pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
IMAGES = REPO / "data" / "image_region_caption"
ANSWERS = [
    '{"region1":"A red car","region2":"A tree"}',
    '{\n  "region1" : "k leftere dowgor" ,\n  "region2" : "' + "w " * 1000 + '"\n}',  # cut at max_tokens
    '{"region1": "only one region"}',
]


def test_cut_or_invalid_structured_answers_get_no_captions_and_keep_their_answer(tmp_path: Path) -> None:
    calls = count()

    def answer(schema: Any, body: Any) -> str:
        return ANSWERS[next(calls)]

    first_entry = tmp_path / "in.jsonl"
    rows = [{"image": str(IMAGES / n), "bbox": [[20, 20, 80, 60], [100, 90, 60, 50]]} for n in ("park.jpg",) * 3]
    first_entry.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with OpenAITestServer(schema_answer_fn=answer) as server:
        cmd = [
            sys.executable, str(SCRIPT), "--backend", "api", "--api_url", server.base_url, "--model_name", "m",
            "--first_entry_file", str(first_entry), "--cache_path", str(tmp_path / "cache"), "--file_name_prefix",
            "rc", "--structured_answer", "json", "--max_tokens", "400", "--max_workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert all(r.body.get("response_format") for r in server.requests) and len(server.requests) == 3
    assert proc.returncode == 0, proc.stderr[-3000:]
    step2 = [json.loads(line) for line in (tmp_path / "cache" / "rc_step2.jsonl").read_text().splitlines()]
    assert [r["truncated"] for r in step2] == [False, True, False]
    parsed = [json.loads(line) for line in (tmp_path / "cache" / "rc_step3.jsonl").read_text().splitlines()]
    assert parsed[0]["region_captions"] == ["A red car", "A tree"] and not parsed[0]["error"]
    for row, why in ((parsed[1], "cut off at max_tokens"), (parsed[2], "not the JSON object asked for")):
        assert row["region_captions"] is None
        assert row["error"].startswith("StructuredAnswerError: the structured answer is " + why)
        assert row["answer"] == step2[parsed.index(row)]["answer"] and row["answer"]  # the raw answer is kept
    summary = json.loads((tmp_path / "cache" / "rc_summary.json").read_text())
    assert summary["row_errors"] == {"StructuredAnswerError": 2}
    assert summary["metrics"]["region_captions_parsed"] == summary["metrics"]["region_captions_parsed_total"] == 2
    assert "region_captions_truncated_parsed_total" not in summary["metrics"]  # nothing cut counts as parsed


def test_the_token_budget_leaves_room_for_whitespace() -> None:
    """Beyond the JSON with its wider separators: two tokens per region and two for the braces, enough for
    the object written one key per line (as a server pads it), with one token per byte."""
    for n in (1, 3, 10):
        keys = {f"region{k}": "" for k in range(1, n + 1)}
        assert structured_answer_overhead(n) == len(json.dumps(keys)) + 2 * (n + 1) + 1
        assert structured_answer_overhead(n) >= len(json.dumps(keys, indent=1)) + 1
