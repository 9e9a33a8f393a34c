"""The region-caption pipeline script end to end with ``--backend api`` against a local fake endpoint."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx  # noqa: F401 - a declared test dependency: imported, never skipped
from PIL import Image

from tests.support.openai_test_requests import Fault, image_urls
from tests.support.openai_test_server import OpenAITestServer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
DEMO = REPO / "data" / "image_region_caption" / "image_region_caption_demo.jsonl"
KEY_VAR = "DFMM_E2E_API_KEY"
KEY = "sk-e2e-never-printed-42"


def run_pipeline(server: OpenAITestServer, tmp_path: Path, first_entry_file: Path, *extra: str):
    cache = tmp_path / "cache"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--backend", "api",
        "--api_url", server.base_url,
        "--model_name", "test-model",
        "--api_key_env", KEY_VAR,
        "--first_entry_file", str(first_entry_file),
        "--cache_path", str(cache),
        "--file_name_prefix", "rc",
        "--output_image_with_bbox_path", str(cache / "image_with_bbox_result.jsonl"),
        *extra,
    ]  # fmt: skip
    env = {
        **os.environ,
        KEY_VAR: KEY,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    for name in ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    rows = []
    step2 = cache / "rc_step2.jsonl"
    if step2.exists():
        rows = [json.loads(line) for line in step2.read_text().splitlines() if line.strip()]
    return proc, rows, cache


def assert_key_never_written(proc, cache: Path) -> None:
    assert KEY not in proc.stdout and KEY not in proc.stderr
    for path in cache.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".csv", ".txt", ".log"):
            assert KEY not in path.read_text(errors="replace"), path


def test_region_captions_via_api_backend_all_ok(tmp_path):
    with OpenAITestServer(api_key=KEY, delay=0.02) as server:
        proc, rows, cache = run_pipeline(server, tmp_path, DEMO, "--max_workers", "2", "--seed", "5")
        assert proc.returncode == 0, proc.stderr[-3000:]
        requests = list(server.requests)
        assert server.max_in_flight <= 2
    demo_rows = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
    assert len(rows) == len(demo_rows) == len(requests)
    assert [r["image"] for r in rows] == [r["image"] for r in demo_rows]  # input order kept
    for row in rows:
        assert row.get("error") is None
        assert row["answer"] == f"answer to: {row['prompt'][:40]}"
    for request in requests:
        assert request.authorization == f"Bearer {KEY}"
        body = request.body
        assert body["model"] == "test-model" and body["seed"] == 5
        (url,) = image_urls(body)
        assert url.startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert max(image.size) <= 1024
    assert "0 failed, 0 retried" in proc.stdout
    assert_key_never_written(proc, cache)


def test_region_captions_via_api_backend_with_a_failing_row(tmp_path):
    images = REPO / "data" / "image_region_caption"
    entries = [  # 1, 2 and 3 boxes: each row's prompt names its own region count
        {"image": str(images / "street.jpg"), "bbox": [[50, 50, 200, 210]]},
        {"image": str(images / "park.jpg"), "bbox": [[40, 60, 140, 240], [330, 235, 130, 95]]},
        {
            "image": str(images / "kitchen.jpg"),
            "bbox": [[60, 190, 140, 80], [300, 150, 85, 110], [10, 10, 40, 40]],
        },
    ]
    first_entry = tmp_path / "input.jsonl"
    first_entry.write_text("".join(json.dumps(e) + "\n" for e in entries))
    faults = {
        "There are 2 regions": Fault.http(400, message="this image cannot be read"),  # every time
        "There are 3 regions": Fault.http(429, times=1, retry_after="0"),  # once, then answered
    }
    with OpenAITestServer(faults_by_text=faults) as server:
        proc, rows, cache = run_pipeline(server, tmp_path, first_entry)
        assert proc.returncode == 0, proc.stderr[-3000:]
        counts = [len(server.requests_for(f"There are {n} regions")) for n in (1, 2, 3)]
    assert counts == [1, 1, 2]  # the 400 is not retried, the 429 is retried once
    assert [r["image"] for r in rows] == [e["image"] for e in entries]
    ok1, failed, ok3 = rows
    assert ok1["error"] is None and ok1["answer"].startswith("answer to: Describe")
    assert ok3["error"] is None and ok3["answer"].startswith("answer to: Describe")
    assert failed.get("answer") is None  # never an error string posing as a caption
    assert failed["error"].startswith("ServingError: HTTP 400")  # the request is wrong: failed, not pending
    assert "this image cannot be read" in failed["error"]
    assert "1 failed, 1 retried" in proc.stdout
    assert "with error: ServingError x1" in proc.stdout
    assert_key_never_written(proc, cache)
