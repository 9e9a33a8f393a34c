"""A run with image URLs: no written file holds a URL's password, and ``--download_timeout`` cuts a trickling
server off (issue 24, items 8 and 9). The region-caption script runs on the fake OpenAI server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm.common.errors import EXIT_INCOMPLETE
from tests.support.openai_test_server import OpenAITestServer
from tests.support.user_inputs import image_bytes, image_http_server

pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
PICTURE = image_bytes(Image.new("RGB", (200, 160), (30, 120, 200)))
PASSWORD = "Pw-5ecret-9x"


def test_credentials_are_never_written_and_a_slow_download_is_cut_off(tmp_path: Path) -> None:
    routes = {"/ok.jpg": PICTURE, "/slow.jpg": PICTURE}
    with image_http_server(routes, trickle={"/slow.jpg": 1.0}) as (base, hits), OpenAITestServer() as server:
        host = base.removeprefix("http://")
        images = [f"{base}/ok.jpg", f"http://alice:{PASSWORD}@{host}/ok.jpg", f"{base}/slow.jpg"]
        first_entry = tmp_path / "in.jsonl"
        first_entry.write_text("".join(json.dumps({"image": i, "bbox": [[20, 20, 80, 60]]}) + "\n" for i in images))
        cmd = [
            sys.executable, str(SCRIPT), "--backend", "api", "--api_url", server.base_url, "--model_name", "m",
            "--first_entry_file", str(first_entry), "--cache_path", str(tmp_path / "cache"), "--file_name_prefix",
            "rc", "--download_timeout", "1",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.pop(name, None)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        took = time.monotonic() - started
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr[-3000:]  # the slow image's row is pending
    assert took < 60, took  # 4 attempts of 1 s and their backoff; without a deadline: ~10 minutes
    assert hits["/slow.jpg"] == 4 and hits["/ok.jpg"] == 1  # the credentials were never sent
    rows = [json.loads(line) for line in (tmp_path / "cache" / "rc_step1.jsonl").read_text().splitlines()]
    by_image = {row["image"]: row for row in rows}
    assert set(by_image) == {f"{base}/ok.jpg", f"http://alice:***@{host}/ok.jpg", f"{base}/slow.jpg"}
    assert not by_image[f"{base}/ok.jpg"]["error"]
    assert "user name or password" in by_image[f"http://alice:***@{host}/ok.jpg"]["error"]
    assert by_image[f"http://alice:***@{host}/ok.jpg"]["error"].startswith("ImageDownloadError")  # failed for good
    assert by_image[f"{base}/slow.jpg"]["error"].startswith("ImageUnavailableError")  # pending: a rerun tries again
    assert (
        "no complete download within 1 s (download_timeout) after 4 attempts" in by_image[f"{base}/slow.jpg"]["error"]
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in written) and any(p.suffix == ".html" for p in written)
    for path in written:
        if path != first_entry:  # the user's own file
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in proc.stdout and PASSWORD not in proc.stderr
